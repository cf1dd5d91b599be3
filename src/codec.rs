//! The protobuf codec every generated client and server uses: prost, with small
//! per-call buffers.
//!
//! tonic's default codec reserves 8 KiB to encode each call's messages and holds it for
//! the call's life. taskwire's messages are a few hundred bytes and a watch process holds
//! thousands of server streams, so that reservation was the largest part of a stream's
//! memory (heaptrack on W4, docs/benchmarks.md). A buffer still grows for a larger
//! message.
//!
//! A message that does not decode is the sender's fault: INVALID_ARGUMENT with a short
//! reason. prost's own error is INTERNAL and echoes the whole path of the failure (3 KB
//! for an input nested 60 levels deep, past prost's recursion limit).

use std::marker::PhantomData;

use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

/// Bytes reserved per call for encoding and decoding.
const BUFFER: usize = 1024;
/// tonic's default: how much encoded data a stream buffers before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with 1 KiB buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = CallerDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER,
            YIELD_THRESHOLD,
        )))
    }
}

/// prost's decoder, its failures answered as the sender's.
#[derive(Debug)]
pub struct CallerDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for CallerDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src).map_err(|e| {
            let reason = if e.message().contains("recursion limit") {
                "it is nested too deeply"
            } else {
                "it is not valid protobuf for this method"
            };
            Status::invalid_argument(format!("the message could not be decoded: {reason}"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
