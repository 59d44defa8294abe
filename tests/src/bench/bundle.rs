//! Bundles as the benchmarks' session clients take them: fetched from offset 0 over
//! `FetchBundle` (or several in one `FetchBundles` call), checked chunk by chunk, gunzipped
//! (bounded) and compared with their digest.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::GzDecoder;
use flotilla_agent::bundles::MAX_BUNDLE_BYTES;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::{BundleChunk, FetchBundleRequest, FetchBundlesRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// One bundle as its chunks arrive: the bytes so far and the size the hub said.
#[derive(Debug, Default)]
struct Received {
    bytes: Vec<u8>,
    total: Option<u64>,
}

impl Received {
    /// Appends the next chunk, which must start where the bytes so far end.
    fn append(&mut self, chunk: &BundleChunk) -> Result<(), String> {
        if chunk.offset != self.bytes.len() as u64 {
            return Err(format!(
                "the hub sent offset {}, expected {}",
                chunk.offset,
                self.bytes.len()
            ));
        }
        if chunk.total_size > MAX_BUNDLE_BYTES {
            return Err(format!("bundle larger than {MAX_BUNDLE_BYTES} bytes"));
        }
        self.bytes.extend_from_slice(&chunk.data);
        self.total = Some(chunk.total_size);
        Ok(())
    }

    /// The whole bundle, checked against `digest`: its uncompressed size.
    fn verified(&self, digest: &str) -> Result<u64, String> {
        if let Some(total) = self.total.filter(|t| *t != self.bytes.len() as u64) {
            return Err(format!(
                "stream ended at {} of {total} bytes",
                self.bytes.len()
            ));
        }
        verify(digest, &self.bytes)
    }
}

/// Fetches a bundle from offset 0 and checks it; returns its uncompressed size.
pub async fn fetch_verified(
    client: &mut AgentSessionClient<Channel>,
    digest: &str,
) -> Result<u64, String> {
    let mut stream = client
        .fetch_bundle(FetchBundleRequest {
            digest: digest.to_string(),
            offset: 0,
        })
        .await
        .map_err(|s| format!("FetchBundle: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut received = Received::default();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("FetchBundle stream: {:?}: {}", s.code(), s.message()))?
    {
        received.append(&chunk)?;
    }
    received.verified(digest)
}

/// Fetches several bundles in one `FetchBundles` call and checks each: per digest asked for
/// (duplicates once), its uncompressed size or what went wrong with it. A call refused or
/// broken as a whole is an error for every bundle not complete by then.
pub async fn fetch_many_verified(
    client: &mut AgentSessionClient<Channel>,
    digests: &[&str],
) -> HashMap<String, Result<u64, String>> {
    let mut asked: Vec<&str> = digests.to_vec();
    asked.sort_unstable();
    asked.dedup();
    let mut got: HashMap<String, Received> = HashMap::new();
    let broken = fetch_into(client, &asked, &mut got).await.err();
    asked
        .iter()
        .map(|d| {
            let result = match got.get(*d) {
                Some(received) => received.verified(d),
                None => Err(broken
                    .clone()
                    .unwrap_or_else(|| "the hub sent none of it".into())),
            };
            (d.to_string(), result)
        })
        .collect()
}

/// Reads a `FetchBundles` stream into `got`, per digest.
async fn fetch_into(
    client: &mut AgentSessionClient<Channel>,
    digests: &[&str],
    got: &mut HashMap<String, Received>,
) -> Result<(), String> {
    let mut stream = client
        .fetch_bundles(FetchBundlesRequest::from_start(digests))
        .await
        .map_err(|s| format!("FetchBundles: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("FetchBundles stream: {:?}: {}", s.code(), s.message()))?
    {
        if !digests.contains(&chunk.digest.as_str()) {
            return Err(format!(
                "the hub sent bundle {:?}, not asked for",
                chunk.digest
            ));
        }
        got.entry(chunk.digest.clone())
            .or_default()
            .append(&chunk)?;
    }
    Ok(())
}

/// Gunzips and compares the sha256 of the content with `digest`; returns the content's size.
pub fn verify(digest: &str, compressed: &[u8]) -> Result<u64, String> {
    let mut out = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    if out.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("bundle larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if actual != digest {
        return Err(format!("content digest is {actual}; refused"));
    }
    Ok(out.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bundles_are_verified_against_their_digest() {
        let content = br#"[{"apiVersion":"v1","kind":"ConfigMap"}]"#;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(content)));
        assert_eq!(verify(&digest, &gz(content)), Ok(content.len() as u64));
        let other = format!("sha256:{}", hex::encode(Sha256::digest(b"other")));
        assert!(
            verify(&other, &gz(content))
                .unwrap_err()
                .contains("refused")
        );
        assert!(verify(&digest, content).unwrap_err().contains("gzip"));
    }
}
