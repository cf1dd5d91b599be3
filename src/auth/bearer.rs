//! The client side of API keys: a tonic interceptor that sends `authorization: Bearer
//! <token>` with every call (the CLI's, the benchmark's).

use tonic::{
    metadata::{Ascii, MetadataValue, errors::InvalidMetadataValue},
    service::Interceptor,
};

/// Sends its token with every call; with none, sends nothing.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token` (an API key or a JWT), or nothing for `None`. Refuses a token that
    /// is not printable ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidMetadataValue> {
        token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map(Self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
