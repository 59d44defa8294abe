//! Bundles as the benchmarks' session clients take them: fetched from offset 0 over
//! `FetchBundle` (or several in one `FetchBundles` call), checked chunk by chunk, gunzipped (bounded) and compared with their digest.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::GzDecoder;
use flotilla_agent::bundles::MAX_BUNDLE_BYTES;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::{FetchBundleRequest, FetchBundlesRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

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
    let mut compressed = Vec::new();
    let mut total = None;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("FetchBundle stream: {:?}: {}", s.code(), s.message()))?
    {
        if chunk.offset != compressed.len() as u64 {
            return Err(format!(
                "the hub sent offset {}, expected {}",
                chunk.offset,
                compressed.len()
            ));
        }
        if chunk.total_size > MAX_BUNDLE_BYTES {
            return Err(format!("bundle larger than {MAX_BUNDLE_BYTES} bytes"));
        }
        compressed.extend_from_slice(&chunk.data);
        total = Some(chunk.total_size);
    }
    if total.is_some_and(|t| t != compressed.len() as u64) {
        return Err(format!(
            "stream ended at {} of {} bytes",
            compressed.len(),
            total.unwrap_or(0)
        ));
    }
    verify(digest, &compressed)
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
    let mut got: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let broken = fetch_into(client, &asked, &mut got).await.err();
    asked
        .iter()
        .map(|d| {
            let result = match got.remove(*d) {
                Some((bytes, total)) if total == bytes.len() as u64 => verify(d, &bytes),
                Some((bytes, total)) => {
                    Err(format!("stream ended at {} of {total} bytes", bytes.len()))
                }
                None => Err(broken
                    .clone()
                    .unwrap_or_else(|| "the hub sent none of it".into())),
            };
            (d.to_string(), result)
        })
        .collect()
}

/// Reads a `FetchBundles` stream into `got`: per digest, the bytes and the size the hub said.
async fn fetch_into(
    client: &mut AgentSessionClient<Channel>,
    digests: &[&str],
    got: &mut HashMap<String, (Vec<u8>, u64)>,
) -> Result<(), String> {
    let mut stream = client
        .fetch_bundles(FetchBundlesRequest {
            bundles: digests
                .iter()
                .map(|d| FetchBundleRequest {
                    digest: d.to_string(),
                    offset: 0,
                })
                .collect(),
        })
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
        let (bytes, total) = got.entry(chunk.digest).or_default();
        if chunk.offset != bytes.len() as u64 {
            return Err(format!(
                "the hub sent offset {}, expected {}",
                chunk.offset,
                bytes.len()
            ));
        }
        if chunk.total_size > MAX_BUNDLE_BYTES {
            return Err(format!("bundle larger than {MAX_BUNDLE_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk.data);
        *total = chunk.total_size;
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
