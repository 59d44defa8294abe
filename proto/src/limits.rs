//! Wire-level size limits shared by hub and agent.

/// The largest gRPC message either side decodes; larger ones end the call with `OutOfRange`.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest PEM CSR the hub will parse.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Size of one `BundleChunk`.
pub const BUNDLE_CHUNK_BYTES: usize = 256 * 1024;

/// The most bundles one `FetchBundles` call may ask for.
pub const MAX_BUNDLES_PER_FETCH: usize = 1024;
