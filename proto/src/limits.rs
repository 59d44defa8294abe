//! Wire-level size limits shared by hub and agent.

/// The largest gRPC message either side decodes; larger ones end the call with `OutOfRange`.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest PEM CSR the hub will parse.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Size of one `BundleChunk`.
pub const BUNDLE_CHUNK_BYTES: usize = 256 * 1024;

/// The most bundles one `FetchBundles` call may ask for.
pub const MAX_BUNDLES_PER_FETCH: usize = 1024;

/// The largest status report an agent sends in one message (more apps go in several). The hub
/// holds one decode buffer per session for days, and it grows to the largest message read, so
/// reports stay small; an app whose own status is larger still goes alone.
pub const MAX_REPORT_BYTES: usize = 4 * 1024;

/// The largest desired state the hub sends inline on a session (gRPC frame included); a larger
/// one is announced and the agent fetches it with `FetchDesiredState`, so that the session's
/// encode buffer, which keeps the size of the largest message it encoded, stays small.
pub const INLINE_DESIRED_BYTES: usize = 1024;

/// The flow-control window the hub grants each stream an agent or client opens: the most a
/// peer sends before the hub has read it, and so the largest DATA frame it sends. Frames of at
/// most 8 KiB with their 9-byte header fit h2's first read buffer, which then never grows for
/// the life of the connection (a 16 KiB frame makes it ~24 KiB, kept per connection).
pub const INBOUND_STREAM_WINDOW: u32 = 8 * 1024 - 9;
