//! The protobuf codec of every Flotilla service and client: tonic-prost's encoding, with
//! smaller first buffers than tonic's.
//!
//! tonic allocates an encode and a decode buffer up front for every RPC, 8 KiB each by default.
//! An agent session is one RPC held for days and carries mostly heartbeats of a few dozen
//! bytes, so at 10,000 sessions the default is about 160 MiB of hub memory holding almost
//! nothing. These buffers start at [`BUFFER_BYTES`] and grow as a message needs (`BytesMut`
//! at least doubles when it grows), so large messages cost a few reallocations, not a limit.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// What tonic allocates per RPC for encoding, and again for decoding: a session's heartbeats
/// and their acknowledgements are a few dozen bytes.
pub const BUFFER_BYTES: usize = 256;
/// How many bytes of ready messages tonic batches into one write (its default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// tonic-prost's codec with [`BUFFER_BYTES`] buffers; the generated services and clients use
/// it (`build.rs` names it as their codec).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
