//! The gRPC side of a transcoded call: one request message framed for the service, and
//! its answer read back as messages and a final status.

use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use tonic::{Code, Status};

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
pub(super) fn frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

/// What the service sent next.
#[derive(Debug)]
pub(super) enum Item {
    /// One response message (encoded protobuf).
    Message(Bytes),
    /// The call ended with this status (OK or not); nothing follows.
    End(Status),
}

/// Reads a gRPC response body as a sequence of [`Item`]s.
pub(super) struct Answer {
    body: Pin<Box<dyn Body<Data = Bytes, Error = super::BoxError> + Send>>,
    buf: BytesMut,
    /// A trailers-only response carries its status in the headers.
    ended: Option<Status>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl Answer {
    /// Starts reading `response`.
    pub(super) fn new<B>(response: http::Response<B>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<super::BoxError>,
    {
        let (parts, body) = response.into_parts();
        let ended = parts
            .headers
            .contains_key("grpc-status")
            .then(|| status_of(&parts.headers));
        Self {
            body: Box::pin(body.map_err(Into::into)),
            buf: BytesMut::new(),
            ended,
        }
    }

    /// The next message, or the end.
    pub(super) async fn next(&mut self) -> Item {
        if let Some(status) = self.ended.take() {
            return Item::End(status);
        }
        loop {
            if let Some(message) = self.split_message() {
                return message;
            }
            match self.body.frame().await {
                None => {
                    return Item::End(Status::internal(
                        "the service's answer ended without a status",
                    ));
                }
                Some(Err(e)) => {
                    return Item::End(Status::unavailable(format!(
                        "the service's answer broke off: {e}"
                    )));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Item::End(status_of(&trailers));
                        }
                    }
                },
            }
        }
    }

    fn split_message(&mut self) -> Option<Item> {
        if self.buf.len() < 5 {
            return None;
        }
        let compressed = self.buf[0] != 0;
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len).freeze();
        if compressed {
            // Never asked for (no grpc-accept-encoding is sent).
            return Some(Item::End(Status::internal(
                "the service sent a compressed message",
            )));
        }
        Some(Item::Message(message))
    }
}

/// The status in a trailers (or trailers-only headers) map; a missing one is INTERNAL.
fn status_of(map: &http::HeaderMap) -> Status {
    Status::from_header_map(map).unwrap_or_else(|| {
        Status::new(
            Code::Internal,
            "the service's answer carried no grpc-status",
        )
    })
}
