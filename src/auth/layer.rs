//! The tower layer in front of every gRPC server: authenticates the caller, checks
//! its role against the method, and attaches its [`Principal`] for the handlers.
//!
//! It runs inside tonic-web's layer, so grpc-web and native gRPC calls meet the same
//! checks. Health and reflection stay open (orchestrators and grpcurl's `list` call
//! them without credentials); every `taskwire.*` method needs a role, and a method
//! missing from [`required_role`] needs admin: an RPC added later is closed until
//! someone decides who may call it.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use super::{Principal, Role, keys::Refused, keys::Verifier};

/// Whether a server checks callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No authentication: every caller sees and may do everything. Refused off
    /// loopback unless `--insecure`.
    Off,
    /// API keys (`authorization: Bearer twk_…`), checked against the database.
    Keys,
}

/// The role a method needs, or `None` for the open services (health, reflection).
pub fn required_role(path: &str) -> Option<Role> {
    let method = path.strip_prefix("/taskwire.")?;
    Some(match method {
        "v1.TaskService/GetStatus"
        | "v1.TaskService/ListTasks"
        | "v1.WatchService/WatchTask"
        | "v1.TaskService/ListAttempts"
        | "v1.WatchService/WatchTasks" => Role::Reader,
        "v1.TaskService/SubmitTask"
        | "v1.TaskService/SubmitTasks"
        | "v1.TaskService/CancelTask"
        | "v1.TaskService/RetryTask"
        | "v1.TaskService/RetryTasks"
        | "v1.TaskService/DiscardTasks" => Role::Submitter,
        // GetQueueStats spans every tenant's tasks; and anything not listed.
        _ => Role::Admin,
    })
}

/// Authenticates with `verifier`, or (`None`) attaches [`Principal::open`] to every
/// call.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Option<Arc<Verifier>>,
}

impl AuthLayer {
    /// Checks API keys with `verifier`.
    pub fn keys(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier: Some(verifier),
        }
    }

    /// No authentication.
    pub fn open() -> Self {
        Self { verifier: None }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Option<Arc<Verifier>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone is ready only after poll_ready: call the one that was polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(needed) = required_role(req.uri().path()) else {
            return Box::pin(inner.call(req));
        };
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let principal = match verifier {
                None => Principal::open(),
                Some(v) => match authenticate(&v, bearer_of(req.headers())).await {
                    Ok(p) => p,
                    Err(status) => return Ok(status.into_http()),
                },
            };
            if principal.role < needed {
                let method = req.uri().path().rsplit('/').next().unwrap_or_default();
                let status = Status::permission_denied(format!(
                    "a {} key cannot call {method}: it needs {needed}",
                    principal.role
                ));
                return Ok(status.into_http());
            }
            req.extensions_mut().insert(principal);
            inner.call(req).await
        })
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_of(headers: &http::HeaderMap) -> Result<String, Status> {
    let Some(header) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <API key>`",
        ));
    };
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <API key>`")
        })
}

async fn authenticate(v: &Verifier, bearer: Result<String, Status>) -> Result<Principal, Status> {
    v.verify(&bearer?).await.map_err(|e| match e {
        Refused::Invalid => Status::unauthenticated(e.to_string()),
        Refused::Unavailable(_) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "API key not checked");
            Status::unavailable(e.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_needs_a_role_and_unknown_ones_need_admin() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/taskwire.v1.TaskService/GetStatus"),
            Some(Role::Reader)
        );
        assert_eq!(
            required_role("/taskwire.v1.TaskService/SubmitTask"),
            Some(Role::Submitter)
        );
        assert_eq!(
            required_role("/taskwire.v1.TaskService/SubmitTasks"),
            Some(Role::Submitter)
        );
        assert_eq!(
            required_role("/taskwire.v1.TaskService/GetQueueStats"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("/taskwire.v1.TaskService/SomethingNew"),
            Some(Role::Admin)
        );
    }
}
