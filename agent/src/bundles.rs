//! The agent's bundle cache: bundles fetched from the hub with `FetchBundle`, in chunks, resumable
//! after a cut (a `.partial` file is continued from its length), verified against their digest
//! (sha256 of the uncompressed canonical bundle) before they are kept. Also remembers the last
//! desired state so a restarted agent says which generation it holds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::{BundleChunk, DesiredState, FetchBundleRequest, FetchBundlesRequest};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// The largest uncompressed bundle the agent accepts (the hub's default limit).
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid bundle digest {0:?}")]
    InvalidDigest(String),
    #[error("bundle {digest}: {path}: {source}")]
    Io {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {digest}: fetch failed: {message}")]
    Fetch { digest: String, message: String },
    #[error("bundle {digest}: no data from the hub for {}", humantime::format_duration(*after))]
    Stalled {
        digest: String,
        after: std::time::Duration,
    },
    #[error("bundle {digest}: the hub sent offset {got}, expected {want}")]
    BadChunk { digest: String, got: u64, want: u64 },
    #[error("bundle {digest}: content digest is {actual}; refused")]
    DigestMismatch { digest: String, actual: String },
    #[error("bundle {digest}: larger than {MAX_BUNDLE_BYTES} bytes; refused")]
    TooLarge { digest: String },
    #[error("bundle {digest}: not valid gzip: {source}")]
    Undecodable {
        digest: String,
        source: std::io::Error,
    },
}

/// Bundles on local disk under `<dir>/sha256/<hex>.gz`.
#[derive(Debug, Clone)]
pub struct BundleStore {
    dir: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str, BundleError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| BundleError::InvalidDigest(digest.to_string()))
}

impl BundleError {
    /// A broken or stalled transfer: trying again resumes where it stopped.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            BundleError::Fetch { .. } | BundleError::Stalled { .. }
        )
    }
}

impl BundleStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str, ext: &str) -> Result<PathBuf, BundleError> {
        Ok(self
            .dir
            .join("sha256")
            .join(format!("{}.{ext}", hex_of(digest)?)))
    }

    fn io(digest: &str, path: &Path) -> impl Fn(std::io::Error) -> BundleError + use<> {
        let (digest, path) = (digest.to_string(), path.to_path_buf());
        move |source| BundleError::Io {
            digest: digest.clone(),
            path: path.clone(),
            source,
        }
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest, "gz").is_ok_and(|p| p.is_file())
    }

    /// Digests of every bundle held (for Hello).
    pub fn digests(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("sha256")) else {
            return vec![];
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".gz"))
                    .map(|h| format!("sha256:{h}"))
            })
            .collect();
        out.sort();
        out
    }

    /// The uncompressed, verified bundle.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, BundleError> {
        let path = self.path(digest, "gz")?;
        let file = std::fs::File::open(&path).map_err(Self::io(digest, &path))?;
        verify(digest, file)
    }

    /// Bytes already downloaded of an unfinished fetch.
    pub fn partial_len(&self, digest: &str) -> u64 {
        self.path(digest, "partial")
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Fetches `digest` from the hub unless held, continuing a partial download; verifies it
    /// before keeping it. A partial file whose result fails verification is discarded.
    /// Fetches `digest` from where an earlier attempt stopped (the partial file), waiting at
    /// most `chunk_timeout` for each chunk.
    pub async fn fetch(
        &self,
        client: &mut AgentSessionClient<Channel>,
        digest: &str,
        chunk_timeout: std::time::Duration,
    ) -> Result<(), BundleError> {
        if self.has(digest) {
            return Ok(());
        }
        let mut partial = self.partial(digest)?;
        let request = client.fetch_bundle(FetchBundleRequest {
            digest: digest.to_string(),
            offset: partial.offset,
        });
        let mut stream = within(digest, chunk_timeout, request).await?.into_inner();
        while let Some(chunk) = within(digest, chunk_timeout, stream.message()).await? {
            partial.append(&chunk)?;
        }
        self.keep(partial)
    }

    /// The partial file of `digest`, opened to be continued (created, with its directory, if
    /// there is none).
    fn partial(&self, digest: &str) -> Result<Partial, BundleError> {
        let path = self.path(digest, "partial")?;
        let dir = self.dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(Self::io(digest, &dir))?;
        let offset = self.partial_len(digest);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Self::io(digest, &path))?;
        Ok(Partial {
            digest: digest.to_string(),
            path,
            file,
            offset,
            total: None,
        })
    }

    /// Ends a download: verified, the partial file becomes the bundle; a bad one is discarded.
    fn keep(&self, partial: Partial) -> Result<(), BundleError> {
        let Partial {
            digest,
            path,
            file,
            offset,
            total,
        } = partial;
        file.sync_all().map_err(Self::io(&digest, &path))?;
        drop(file);
        if total.is_some_and(|t| t != offset) {
            return Err(BundleError::Fetch {
                message: format!("stream ended at {offset} of {} bytes", total.unwrap_or(0)),
                digest,
            });
        }
        let check = std::fs::File::open(&path)
            .map_err(Self::io(&digest, &path))
            .and_then(|f| verify(&digest, f));
        if let Err(e) = check {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let done = self.path(&digest, "gz")?;
        std::fs::rename(&path, &done).map_err(Self::io(&digest, &done))
    }

    /// Fetches the bundles of `digests` not held yet in one `FetchBundles` call, each from
    /// where an earlier attempt stopped, verifying each before keeping it. Stops at the first
    /// error: the bundles taken by then are kept, [`Self::fetch`] takes the rest one by one.
    /// Returns how many bundles were taken.
    pub async fn fetch_many(
        &self,
        client: &mut AgentSessionClient<Channel>,
        digests: &[&str],
        chunk_timeout: std::time::Duration,
    ) -> Result<usize, BundleError> {
        let mut wanted: Vec<FetchBundleRequest> = Vec::new();
        for d in digests {
            hex_of(d)?;
            if !self.has(d) && !wanted.iter().any(|w| w.digest == *d) {
                wanted.push(FetchBundleRequest {
                    digest: d.to_string(),
                    offset: self.partial_len(d),
                });
            }
        }
        wanted.truncate(flotilla_proto::limits::MAX_BUNDLES_PER_FETCH);
        let Some(first) = wanted.first().map(|w| w.digest.clone()) else {
            return Ok(0);
        };
        let request = client.fetch_bundles(FetchBundlesRequest {
            bundles: wanted.clone(),
        });
        let mut stream = within(&first, chunk_timeout, request).await?.into_inner();
        // The bundle being written.
        let mut current: Option<Partial> = None;
        let mut taken = 0;
        // Where in `wanted` the next bundle sent is looked for.
        let mut next_from = 0;
        loop {
            let at = current.as_ref().map_or(first.as_str(), |p| &p.digest);
            let chunk = within(at, chunk_timeout, stream.message()).await?;
            let next = chunk.as_ref().map(|c| c.digest.as_str());
            if let Some(done) = current.take_if(|p| Some(p.digest.as_str()) != next) {
                self.keep(done)?;
                taken += 1;
            }
            let Some(chunk) = chunk else {
                return Ok(taken);
            };
            let partial = match current.as_mut() {
                Some(p) => p,
                None => {
                    // Bundles are sent in the order asked (one already complete sends nothing).
                    let Some(i) = wanted[next_from..]
                        .iter()
                        .position(|w| w.digest == chunk.digest)
                        .map(|p| next_from + p)
                    else {
                        return Err(BundleError::Fetch {
                            digest: chunk.digest.clone(),
                            message: "the hub sent a bundle not asked for, or out of order".into(),
                        });
                    };
                    next_from = i + 1;
                    current.insert(self.partial(&wanted[i].digest)?)
                }
            };
            partial.append(&chunk)?;
        }
    }

    /// Keeps a bundle given as its canonical, uncompressed content (embedders, tests and
    /// benchmarks that feed the reconciler without a hub); returns its digest.
    pub fn put(&self, canonical: &[u8]) -> Result<String, BundleError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(canonical)));
        let done = self.path(&digest, "gz")?;
        let dir = self.dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(Self::io(&digest, &dir))?;
        let tmp = self.path(&digest, "partial")?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(canonical).map_err(Self::io(&digest, &tmp))?;
        let bytes = gz.finish().map_err(Self::io(&digest, &tmp))?;
        std::fs::write(&tmp, bytes).map_err(Self::io(&digest, &tmp))?;
        std::fs::rename(&tmp, &done).map_err(Self::io(&digest, &done))?;
        Ok(digest)
    }

    /// Persists the last desired state the agent holds.
    pub fn save_desired(&self, d: &DesiredState) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(".desired.pb.tmp");
        std::fs::write(&tmp, d.encode_to_vec())?;
        std::fs::rename(tmp, self.dir.join("desired.pb"))
    }

    /// The last desired state saved, if any (a corrupt file counts as none).
    pub fn load_desired(&self) -> Option<DesiredState> {
        let bytes = std::fs::read(self.dir.join("desired.pb")).ok()?;
        DesiredState::decode(bytes.as_slice()).ok()
    }
}

/// A download under way: the partial file of a bundle, the bytes it holds, and the size the hub
/// said the bundle has.
struct Partial {
    digest: String,
    path: PathBuf,
    file: std::fs::File,
    offset: u64,
    total: Option<u64>,
}

impl Partial {
    /// Appends the next chunk, which must start where the file ends.
    fn append(&mut self, chunk: &BundleChunk) -> Result<(), BundleError> {
        if chunk.offset != self.offset {
            return Err(BundleError::BadChunk {
                digest: self.digest.clone(),
                got: chunk.offset,
                want: self.offset,
            });
        }
        if chunk.total_size > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                digest: self.digest.clone(),
            });
        }
        self.file
            .write_all(&chunk.data)
            .map_err(BundleStore::io(&self.digest, &self.path))?;
        self.offset += chunk.data.len() as u64;
        self.total = Some(chunk.total_size);
        Ok(())
    }
}

/// Awaits one step of a download of `digest` from the hub for at most `timeout`: a hub that
/// sends nothing for that long stalled it, a refused or broken call failed it.
async fn within<T>(
    digest: &str,
    timeout: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, BundleError> {
    tokio::time::timeout(timeout, step)
        .await
        .map_err(|_| BundleError::Stalled {
            digest: digest.to_string(),
            after: timeout,
        })?
        .map_err(|s| BundleError::Fetch {
            digest: digest.to_string(),
            message: s.message().to_string(),
        })
}

/// Decompresses and checks the sha256 of the content against `digest`.
fn verify(digest: &str, compressed: impl Read) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|source| BundleError::Undecodable {
            digest: digest.to_string(),
            source,
        })?;
    if out.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            digest: digest.to_string(),
        });
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if actual != digest {
        return Err(BundleError::DigestMismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(out)
}
