//! The local content-addressed bundle cache: gzip files under `<dir>/sha256/<hex>.gz`, named by
//! the sha256 of the uncompressed canonical bundle, so identical renderings share one file.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::Limits;
use super::bundle::digest_of;

/// A bundle stored in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    /// `sha256:<hex>` of the uncompressed bundle.
    pub digest: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Size of the compressed file in bytes.
    pub compressed_size: u64,
}

/// Errors of the bundle cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid bundle digest {0:?} (expected sha256:<64 lowercase hex digits>)")]
    InvalidDigest(String),
    #[error(
        "cached bundle {digest} is corrupt: its content hashes to {actual}; the file was removed"
    )]
    Corrupt { digest: String, actual: String },
    #[error("cached bundle {digest} cannot be decompressed ({source}); the file was removed")]
    Undecodable {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("cached bundle {digest} decompresses to more than {limit} bytes; the file was removed")]
    TooLarge { digest: String, limit: u64 },
    #[error("bundle cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Compressed bundles up to this size are served from memory once read.
const HOT_BUNDLE_BYTES: u64 = 1 << 20;
/// Memory the served bundles may take, at most (the least used go first).
const HOT_CACHE_BYTES: u64 = 64 << 20;

/// Weighs a bundle kept in memory by its size.
#[derive(Debug, Clone)]
struct ByLength;

impl quick_cache::Weighter<String, Arc<[u8]>> for ByLength {
    fn weight(&self, _digest: &String, bytes: &Arc<[u8]>) -> u64 {
        bytes.len() as u64 + 64
    }
}

type Hot = quick_cache::sync::Cache<String, Arc<[u8]>, ByLength>;

/// A compressed bundle to serve: its bytes from memory, or its file (too large to keep).
#[derive(Debug)]
pub enum Compressed {
    Memory(Arc<[u8]>),
    File(File),
}

/// Content-addressed, compressed bundles on local disk; the small ones served are also kept in
/// memory, so that a fleet fetching a release reads each file once.
#[derive(Clone)]
pub struct BundleCache {
    dir: PathBuf,
    max_bundle_bytes: u64,
    hot: Arc<Hot>,
    /// Told of every bundle stored ([`BundleCache::wait_for`]).
    added: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleCache")
            .field("dir", &self.dir)
            .field("max_bundle_bytes", &self.max_bundle_bytes)
            .field("in_memory", &self.hot.len())
            .finish()
    }
}

impl BundleCache {
    /// Opens (creating it if needed) the cache under `dir`. Bundles over the default bundle size
    /// limit are refused on read.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let cache = BundleCache {
            dir: dir.into(),
            max_bundle_bytes: Limits::default().max_bundle_bytes,
            hot: Arc::new(Hot::with_weighter(1024, HOT_CACHE_BYTES, ByLength)),
            added: Arc::default(),
        };
        let objects = cache.dir.join("sha256");
        fs::create_dir_all(&objects).map_err(|source| CacheError::Io {
            path: objects,
            source,
        })?;
        Ok(cache)
    }

    /// Uses `limits.max_bundle_bytes` as the largest bundle [`get`](Self::get) decompresses.
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.max_bundle_bytes = limits.max_bundle_bytes;
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a digest is stored in.
    pub fn path_of(&self, digest: &str) -> Result<PathBuf, CacheError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| CacheError::InvalidDigest(digest.to_owned()))?;
        Ok(self.dir.join("sha256").join(format!("{hex}.gz")))
    }

    /// Stores a canonical bundle; idempotent (an existing file is kept). Written to a temporary
    /// file and renamed into place, so readers never see a partial file.
    pub fn put(&self, canonical: &[u8]) -> Result<BundleRef, CacheError> {
        let digest = digest_of(canonical);
        let path = self.path_of(&digest)?;
        let io_err = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        if let Ok(meta) = fs::metadata(&path) {
            return Ok(BundleRef {
                digest,
                size: canonical.len() as u64,
                compressed_size: meta.len(),
            });
        }
        let dir = self.dir.join("sha256");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err)?;
        {
            let mut encoder = GzEncoder::new(tmp.as_file_mut(), Compression::default());
            encoder.write_all(canonical).map_err(io_err)?;
            encoder.finish().map_err(io_err)?;
        }
        tmp.as_file().sync_all().map_err(io_err)?;
        let file = tmp.persist(&path).map_err(|e| io_err(e.error))?;
        self.added.notify_waiters();
        let compressed_size = file.metadata().map_err(io_err)?.len();
        Ok(BundleRef {
            digest,
            size: canonical.len() as u64,
            compressed_size,
        })
    }

    /// Waits until the cache holds `digest`, at most `within`; whether it does. For a bundle
    /// this hub has not rendered yet while another hub replica has (it renders the same commit
    /// when it next syncs).
    pub async fn wait_for(&self, digest: &str, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if self.contains(digest) {
                return true;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.contains(digest);
            }
        }
    }

    /// Whether the cache holds `digest` (an invalid digest is never held).
    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_ok_and(|p| p.is_file())
    }

    /// The uncompressed bundle, verified against its digest; `None` if not cached. A file that
    /// fails verification is removed (so the next [`put`](Self::put) writes it again) and
    /// reported as an error.
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(file) = self.open_compressed(digest)? else {
            return Ok(None);
        };
        let path = self.path_of(digest)?;
        let mut out = Vec::new();
        let limit = self.max_bundle_bytes;
        let read = GzDecoder::new(file).take(limit + 1).read_to_end(&mut out);
        let failure = match read {
            Err(source) => Some(CacheError::Undecodable {
                digest: digest.to_owned(),
                source,
            }),
            Ok(_) if out.len() as u64 > limit => Some(CacheError::TooLarge {
                digest: digest.to_owned(),
                limit,
            }),
            Ok(_) => {
                let actual = digest_of(&out);
                (actual != digest).then(|| CacheError::Corrupt {
                    digest: digest.to_owned(),
                    actual,
                })
            }
        };
        match failure {
            None => Ok(Some(out)),
            Some(err) => {
                // Best effort: a file that cannot be removed is reported again on the next get.
                let _ = fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// The compressed (gzip) file of `digest`, for serving it in chunks; `None` if not cached.
    /// Not verified: the receiver checks the digest of what it decompresses.
    pub fn open_compressed(&self, digest: &str) -> Result<Option<File>, CacheError> {
        let path = self.path_of(digest)?;
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    /// The compressed bundle `digest` to serve: from memory when small (read from its file
    /// the first time), else its file; `None` if not cached. Not verified, as
    /// [`Self::open_compressed`].
    pub fn compressed(&self, digest: &str) -> Result<Option<Compressed>, CacheError> {
        if let Some(bytes) = self.hot.get(digest) {
            return Ok(Some(Compressed::Memory(bytes)));
        }
        let Some(mut file) = self.open_compressed(digest)? else {
            return Ok(None);
        };
        let path = || self.path_of(digest).unwrap_or_default();
        let len = file
            .metadata()
            .map_err(|source| CacheError::Io {
                path: path(),
                source,
            })?
            .len();
        if len > HOT_BUNDLE_BYTES {
            return Ok(Some(Compressed::File(file)));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(|source| CacheError::Io {
                path: path(),
                source,
            })?;
        let bytes: Arc<[u8]> = bytes.into();
        self.hot.insert(digest.to_string(), bytes.clone());
        Ok(Some(Compressed::Memory(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_round_trip_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BundleCache::open(dir.path()).unwrap();
        let bundle = br#"[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}]"#;
        let first = cache.put(bundle).unwrap();
        assert_eq!(first.digest, digest_of(bundle));
        assert_eq!(first.size, bundle.len() as u64);
        assert!(first.compressed_size > 0);
        assert!(cache.contains(&first.digest));
        let path = cache.path_of(&first.digest).unwrap();
        assert!(path.starts_with(dir.path().join("sha256")));
        assert!(path.to_string_lossy().ends_with(".gz"));
        let second = cache.put(bundle).unwrap();
        assert_eq!(first, second);
        let files = fs::read_dir(dir.path().join("sha256")).unwrap().count();
        assert_eq!(files, 1, "one file per digest, no temp files left");
        assert_eq!(
            cache.get(&first.digest).unwrap().as_deref(),
            Some(&bundle[..])
        );
        let mut compressed = Vec::new();
        cache
            .open_compressed(&first.digest)
            .unwrap()
            .unwrap()
            .read_to_end(&mut compressed)
            .unwrap();
        assert_eq!(compressed.len() as u64, first.compressed_size);
    }

    #[test]
    fn missing_and_invalid_digests() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BundleCache::open(dir.path()).unwrap();
        let absent = digest_of(b"absent");
        assert_eq!(cache.get(&absent).unwrap(), None);
        assert!(!cache.contains(&absent));
        assert!(matches!(
            cache.get("md5:abc"),
            Err(CacheError::InvalidDigest(_))
        ));
        assert!(matches!(
            cache.get("sha256:../../etc/passwd"),
            Err(CacheError::InvalidDigest(_))
        ));
    }

    #[test]
    fn corrupted_file_is_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BundleCache::open(dir.path()).unwrap();
        let stored = cache.put(b"[1]").unwrap();
        let path = cache.path_of(&stored.digest).unwrap();
        // Valid gzip with the wrong content.
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"[2]").unwrap();
        fs::write(&path, enc.finish().unwrap()).unwrap();
        let err = cache.get(&stored.digest).unwrap_err();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&stored.digest));
        assert!(!path.exists());
        // Not gzip at all.
        cache.put(b"[1]").unwrap();
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            cache.get(&stored.digest),
            Err(CacheError::Undecodable { .. })
        ));
        // Re-put restores it.
        cache.put(b"[1]").unwrap();
        assert_eq!(
            cache.get(&stored.digest).unwrap().as_deref(),
            Some(&b"[1]"[..])
        );
    }

    #[test]
    fn oversized_bundle_is_refused_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_file_bytes: 10,
            max_bundle_bytes: 10,
        };
        let cache = BundleCache::open(dir.path()).unwrap().with_limits(&limits);
        let stored = cache.put(&[b' '; 64]).unwrap();
        assert!(matches!(
            cache.get(&stored.digest),
            Err(CacheError::TooLarge { .. })
        ));
    }
}
