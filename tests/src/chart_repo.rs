//! A Helm chart repository on loopback HTTP for tests: `index.yaml` and the chart packages of
//! a directory (made with the real `helm package` and `helm repo index`), behind HTTP basic
//! auth, counting the downloads of each path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A running repository; stops when dropped.
pub struct ChartRepo {
    pub url: String,
    downloads: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChartRepo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChartRepo {
    /// Packages each chart directory of `charts` into `dir` with `helm package`, indexes them
    /// with `helm repo index`, and serves `dir` to requests with `user:password`.
    pub async fn start(dir: &Path, charts: &[&Path], user: &str, password: &str) -> ChartRepo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/charts", listener.local_addr().unwrap());
        let helm = crate::tools_dir().join("helm");
        std::fs::create_dir_all(dir).unwrap();
        for chart in charts {
            crate::run_ok(
                std::process::Command::new(&helm)
                    .arg("package")
                    .arg(chart)
                    .arg("--destination")
                    .arg(dir),
            );
        }
        crate::run_ok(
            std::process::Command::new(&helm)
                .args(["repo", "index"])
                .arg(dir)
                .args(["--url", &url]),
        );
        let expected = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        );
        let downloads = Arc::new(Mutex::new(HashMap::new()));
        let root: PathBuf = dir.to_owned();
        let counts = downloads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (root, expected, counts) = (root.clone(), expected.clone(), counts.clone());
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
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                        })
                    });
                    let file = path
                        .strip_prefix("/charts/")
                        .filter(|f| !f.contains('/') && !f.starts_with('.'))
                        .map(|f| root.join(f));
                    let (status, body) = match (authorized, file) {
                        (false, _) => ("401 Unauthorized", b"unauthorized\n".to_vec()),
                        (true, Some(f)) if f.is_file() => {
                            *counts.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                            ("200 OK", std::fs::read(f).unwrap())
                        }
                        (true, _) => ("404 Not Found", b"not found\n".to_vec()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nWWW-Authenticate: Basic realm=\"charts\"\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        ChartRepo {
            url,
            downloads,
            task,
        }
    }

    /// How many times `file` (a name in the repository) was downloaded.
    pub fn downloads(&self, file: &str) -> usize {
        self.downloads
            .lock()
            .unwrap()
            .get(&format!("/charts/{file}"))
            .copied()
            .unwrap_or(0)
    }
}
