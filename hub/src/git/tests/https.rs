//! https fetches against a real smart-HTTP git server on loopback: `git http-backend` behind a
//! small rustls server with a test CA generated here, optionally demanding basic auth.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::*;
use crate::git::{Auth, GitError, TOKEN_USER};

const TOKEN: &str = "t0ken-for-https-tests";

/// A TLS git server for the bare repositories under `root`, stopped when dropped.
pub(super) struct GitHttpsServer {
    port: u16,
    ca_file: PathBuf,
    stop: Arc<AtomicBool>,
    _dir: TempDir,
}

impl GitHttpsServer {
    /// Serves `root`; with `token`, every request must carry basic auth `x-access-token:token`.
    fn start(root: PathBuf, token: Option<&str>) -> GitHttpsServer {
        let dir = TempDir::new().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let expected_auth = token.map(|t| {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{t}"));
            format!("Basic {basic}")
        });
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (config, root, auth) = (config.clone(), root.clone(), expected_auth.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    serve(
                        rustls::StreamOwned::new(conn, stream),
                        &root,
                        auth.as_deref(),
                    );
                });
            }
        });
        GitHttpsServer {
            port,
            ca_file,
            stop,
            _dir: dir,
        }
    }

    pub(super) fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }

    pub(super) fn options(&self) -> FetchOptions {
        FetchOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            timeout: std::time::Duration::from_secs(60),
            ca_file: Some(self.ca_file.clone()),
        }
    }
}

impl Drop for GitHttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
fn serve(
    stream: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    root: &Path,
    auth: Option<&str>,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let Some(body) = read_body(&mut reader, &header) else {
            return;
        };
        let response = if auth.is_some() && header("authorization").as_deref() != auth {
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            http_backend(root, &method, &target, &header, body)
        };
        let out = reader.get_mut();
        if out.write_all(&response).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

fn read_body(
    reader: &mut impl BufRead,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    body.resize(len, 0);
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Runs `git http-backend` as a CGI program for one request; the HTTP response bytes.
fn http_backend(
    root: &Path,
    method: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: Vec<u8>,
) -> Vec<u8> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let protocol = header("git-protocol").unwrap_or_default();
    let mut child = git_command(root)
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header("content-encoding").unwrap_or_default(),
        )
        .env("GIT_PROTOCOL", &protocol)
        .env("HTTP_GIT_PROTOCOL", &protocol)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let output = child.wait_with_output().expect("http-backend output");
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else {
        return b"HTTP/1.1 500 Bad CGI\r\nContent-Length: 0\r\n\r\n".to_vec();
    };
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let content = &raw[at + sep..];
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            Some(_) => response_headers.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    let mut response = format!(
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\n\r\n",
        content.len()
    )
    .into_bytes();
    response.extend_from_slice(content);
    response
}

/// An upstream repository and a bare copy of it served over https.
pub(super) fn served(token: Option<&str>) -> (Upstream, TempDir, GitHttpsServer) {
    let up = Upstream::new();
    up.commit_file("flotilla.yaml", "apps: {}\n", "first");
    let root = TempDir::new().expect("tempdir");
    let bare = root.path().join("fleet.git");
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &up.local_url(),
            &bare.display().to_string(),
        ],
    );
    let server = GitHttpsServer::start(root.path().to_owned(), token);
    (up, root, server)
}

#[test]
fn https_fetch_with_a_token_and_a_private_ca() {
    let (up, root, server) = served(Some(TOKEN));
    let data = DataDir::new();
    let mut spec = spec("https", &server.url("fleet.git"), "main");
    spec.auth = Some(Auth::Token(TOKEN.into()));
    let mirror = Mirror::open_or_init(data.path(), &spec)
        .expect("mirror")
        .with_options(server.options());
    let out = mirror.fetch(&spec).expect("https fetch");
    assert_eq!(out.commit, up.head());

    // Incremental: a pushed commit arrives, nothing else changes.
    let next = up.commit_file("flotilla.yaml", "apps: {web: {}}\n", "second");
    let bare = root.path().join("fleet.git").display().to_string();
    up.git(&["push", "-q", &bare, "main"]);
    let out = mirror.fetch(&spec).expect("incremental https fetch");
    assert_eq!(out.commit, next);
    assert!(out.changed && !out.rewritten);
    assert!(!mirror.fetch(&spec).expect("unchanged").changed);

    // The same credentials embedded in the URL work too, and never show.
    let embedded = format!(
        "https://{TOKEN_USER}:{TOKEN}@127.0.0.1:{}/fleet.git",
        server.port
    );
    let in_url = SourceSpec::new("https-url", embedded, GitRef::Branch("main".into()));
    let mirror = Mirror::open_or_init(data.path(), &in_url)
        .expect("mirror")
        .with_options(server.options());
    assert_eq!(mirror.fetch(&in_url).expect("fetch").commit, next);
    assert!(!format!("{in_url:?}").contains(TOKEN));
}

#[test]
fn https_auth_failures_are_specific_and_never_show_the_secret() {
    let (_up, _root, server) = served(Some(TOKEN));
    let data = DataDir::new();
    for (name, auth) in [
        ("no-auth", None),
        ("wrong", Some(Auth::Token("wr0ng-secret-token".into()))),
    ] {
        let mut spec = spec(name, &server.url("fleet.git"), "main");
        spec.auth = auth;
        let mirror = Mirror::open_or_init(data.path(), &spec)
            .expect("mirror")
            .with_options(server.options());
        let err = mirror.fetch(&spec).expect_err(name);
        assert!(
            matches!(err, GitError::AuthFailed { .. }),
            "{name}: {err:?}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("wr0ng-secret-token"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[test]
fn https_with_an_untrusted_certificate_fails() {
    let (_up, _root, server) = served(None);
    let data = DataDir::new();
    let spec = spec("untrusted", &server.url("fleet.git"), "main");
    let mirror = data.mirror(&spec);
    let err = mirror.fetch(&spec).expect_err("unknown CA");
    assert!(matches!(err, GitError::Fetch { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A CA file that is not PEM is its own error.
    let bad = data.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").expect("write");
    let mirror = Mirror::open_or_init(data.path(), &spec)
        .expect("mirror")
        .with_options(FetchOptions {
            ca_file: Some(bad),
            ..server.options()
        });
    assert!(matches!(mirror.fetch(&spec), Err(GitError::CaFile { .. })));
}

#[test]
fn a_silent_server_times_out() {
    // Accepts TCP connections on loopback and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8) {
            held.push(stream);
        }
    });
    let data = DataDir::new();
    let spec = spec("silent", &format!("https://127.0.0.1:{port}/x.git"), "main");
    let mirror = Mirror::open_or_init(data.path(), &spec)
        .expect("mirror")
        .with_options(FetchOptions {
            connect_timeout: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(2),
            ca_file: None,
        });
    let err = mirror.fetch(&spec).expect_err("silent server");
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "fetching https://127.0.0.1:{port}/x.git: timed out (limits: 1s to connect, 2s in all)"
        )
    );
}
