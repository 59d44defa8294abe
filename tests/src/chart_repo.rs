//! Helm chart sources on loopback HTTP for tests, behind HTTP basic auth, counting downloads:
//! a chart repository (`index.yaml` and packages made with the real `helm package` and `helm
//! repo index`) and an OCI registry (the distribution API's read side: `/v2/`, manifests and
//! blobs, holding a chart as Helm pushes one).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A reply: status line, extra headers, body.
type Reply = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

/// A running loopback server; stops when dropped.
struct Server {
    downloads: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handle(method, path)` on `listener` to requests carrying `user:password` (a
/// `401` with a Basic challenge otherwise); counts the `200` answers to GET per path.
fn serve(
    listener: TcpListener,
    user: &str,
    password: &str,
    handle: impl Fn(&str, &str) -> Reply + Send + Sync + 'static,
) -> Server {
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}")
        )
    );
    let downloads = Arc::new(Mutex::new(HashMap::new()));
    let counts = downloads.clone();
    let handle = Arc::new(handle);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (expected, counts, handle) = (expected.clone(), counts.clone(), handle.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("GET").to_owned();
                let path = words.next().unwrap_or("/").to_owned();
                let authorized = head.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                    })
                });
                let (status, headers, body) = if authorized {
                    handle(&method, &path)
                } else {
                    (
                        "401 Unauthorized",
                        vec![("WWW-Authenticate", "Basic realm=\"charts\"".to_owned())],
                        b"unauthorized\n".to_vec(),
                    )
                };
                if status.starts_with("200") && method == "GET" {
                    *counts.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                }
                let mut reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    reply += &format!("{k}: {v}\r\n");
                }
                reply += "\r\n";
                let _ = conn.write_all(reply.as_bytes()).await;
                if method != "HEAD" {
                    let _ = conn.write_all(&body).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    Server { downloads, task }
}

impl Server {
    fn downloads(&self, path: &str) -> usize {
        self.downloads
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// `helm package CHART --destination DIR`: the package's path.
fn package(chart: &Path, dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = crate::run_ok(
        std::process::Command::new(crate::tools_dir().join("helm"))
            .arg("package")
            .arg(chart)
            .arg("--destination")
            .arg(dir),
    );
    let text = String::from_utf8_lossy(&out);
    let path = text.trim().rsplit(": ").next().unwrap().trim().to_owned();
    path.into()
}

/// A chart repository: `<url>/index.yaml` and `<url>/<chart>-<version>.tgz`.
pub struct ChartRepo {
    pub url: String,
    server: Server,
}

impl ChartRepo {
    /// Packages each chart directory of `charts` into `dir`, indexes them with `helm repo
    /// index`, and serves `dir` to requests with `user:password`.
    pub async fn start(dir: &Path, charts: &[&Path], user: &str, password: &str) -> ChartRepo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/charts", listener.local_addr().unwrap());
        for chart in charts {
            package(chart, dir);
        }
        crate::run_ok(
            std::process::Command::new(crate::tools_dir().join("helm"))
                .args(["repo", "index"])
                .arg(dir)
                .args(["--url", &url]),
        );
        let root = dir.to_owned();
        let server = serve(listener, user, password, move |_, path| {
            let file = path
                .strip_prefix("/charts/")
                .filter(|f| !f.contains('/') && !f.starts_with('.'))
                .map(|f| root.join(f));
            match file {
                Some(f) if f.is_file() => ("200 OK", vec![], std::fs::read(f).unwrap()),
                _ => ("404 Not Found", vec![], b"not found\n".to_vec()),
            }
        });
        ChartRepo { url, server }
    }

    /// How many times `file` (a name in the repository) was downloaded.
    pub fn downloads(&self, file: &str) -> usize {
        self.server.downloads(&format!("/charts/{file}"))
    }
}

/// An OCI registry holding one chart, as `oci://<host>/charts/<name>:<version>`.
pub struct OciRegistry {
    /// `oci://127.0.0.1:PORT/charts`.
    pub url: String,
    server: Server,
    layer: String,
    name: String,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl OciRegistry {
    /// Packages `chart` (whose Chart.yaml names `name` and `version`) and serves it.
    pub async fn start(
        dir: &Path,
        chart: &Path,
        (name, version): (&str, &str),
        user: &str,
        password: &str,
    ) -> OciRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("oci://{}/charts", listener.local_addr().unwrap());
        let layer_bytes = std::fs::read(package(chart, dir)).unwrap();
        let config_bytes =
            format!("{{\"apiVersion\":\"v2\",\"name\":\"{name}\",\"version\":\"{version}\"}}")
                .into_bytes();
        let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
        let (layer, config) = (digest(&layer_bytes), digest(&config_bytes));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                       "digest": config, "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                        "digest": layer, "size": layer_bytes.len()}],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = digest(&manifest);
        let blobs: HashMap<String, Vec<u8>> = [
            (layer.clone(), layer_bytes),
            (config, config_bytes),
            (manifest_digest.clone(), manifest.clone()),
        ]
        .into();
        let repo = format!("/v2/charts/{name}");
        let tag = version.to_owned();
        let server = serve(listener, user, password, move |_, path| {
            let not_found = ("404 Not Found", vec![], b"{\"errors\":[]}".to_vec());
            if path == "/v2/" {
                return ("200 OK", vec![], b"{}".to_vec());
            }
            let Some(rest) = path.strip_prefix(&repo) else {
                return not_found;
            };
            if let Some(reference) = rest.strip_prefix("/manifests/") {
                if reference != tag && reference != manifest_digest {
                    return not_found;
                }
                return (
                    "200 OK",
                    vec![
                        ("Content-Type", MANIFEST.to_owned()),
                        ("Docker-Content-Digest", manifest_digest.clone()),
                    ],
                    manifest.clone(),
                );
            }
            match rest.strip_prefix("/blobs/").and_then(|d| blobs.get(d)) {
                Some(blob) => (
                    "200 OK",
                    vec![("Content-Type", "application/octet-stream".to_owned())],
                    blob.clone(),
                ),
                None => not_found,
            }
        });
        OciRegistry {
            url,
            server,
            layer,
            name: name.to_owned(),
        }
    }

    /// How many times the chart's package (its layer blob) was downloaded.
    pub fn chart_downloads(&self) -> usize {
        self.server
            .downloads(&format!("/v2/charts/{}/blobs/{}", self.name, self.layer))
    }
}
