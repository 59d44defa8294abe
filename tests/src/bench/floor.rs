//! The floor: what N mutual-TLS connections holding one HTTP/2 stream each cost with nothing but
//! tokio-rustls and h2, to judge the hub's cost per session against (`loadgen --floor`).
//!
//! * [`serve`] — the bare server: the same TLS settings as the hub (ring provider, a serving
//!   certificate from the hub's own CA with a fresh P-256 key, client certificates required and
//!   chained to that CA, one stateless session ticket per handshake, no session cache) and h2's
//!   default settings; each request stream reads one message, answers with headers and one
//!   message (the session's Hello and Welcome), then stays open until the client leaves.
//! * [`FloorProcess`] — that server as a child process (`loadgen floor-server`), so that its
//!   memory and CPU time are its own.
//! * [`open`] — one client connection: TCP from a loopback source, the TLS handshake with a
//!   cluster's own certificate, the h2 handshake, one stream, Hello → Welcome; then held.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use flotilla_proto::tls::{certs_from_pem, key_from_pem, provider};
use h2::RecvStream;
use h2::server::SendResponse;
use rustls::pki_types::ServerName;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use futures::StreamExt;

use super::client::source_ip;
use super::hub::{ProcSample, sample_pid, sigterm};
use super::prog;

/// The first line the server prints: this, a space, and the address it listens on.
const LISTENING: &str = "floor-server listening on";
/// How long the server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take on the server (as on the hub).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// The messages of the one exchange, about the size of the session's Hello and Welcome.
const HELLO: &[u8] = &[0u8; 96];
const WELCOME: &[u8] = &[0u8; 32];

/// The files the server is started with.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The CA certificate client certificates must chain to (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// The server's certificate chain (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The server's TLS configuration: the hub's settings, without the hub's own checks.
fn server_config(args: &ServerArgs) -> Result<ServerConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(&read(&args.ca)?, "CA")? {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| anyhow!("client verifier: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem(&read(&args.cert)?, "certificate")?,
            key_from_pem(&read(&args.key)?, "key")?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.send_tls13_tickets = 1;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(cfg)
}

/// Runs the floor server on 127.0.0.1 (an ephemeral port, printed on stdout) until its standard
/// input closes, which is how its parent stops it and how it ends when the parent dies.
pub async fn serve(args: ServerArgs) -> Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&args)?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{LISTENING} {}", listener.local_addr()?);
    let accept = async {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(hold_stream(req.into_body(), respond));
                }
            });
        }
    };
    let stdin_closed = async {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {}
    };
    tokio::select! {
        () = accept => Ok(()),
        () = stdin_closed => Ok(()),
    }
}

/// One request stream: reads the Hello, answers with headers and the Welcome, then holds the
/// stream open until the client ends it or the connection goes.
async fn hold_stream(mut body: RecvStream, mut respond: SendResponse<Bytes>) {
    let Some(Ok(hello)) = body.data().await else {
        return;
    };
    let _ = body.flow_control().release_capacity(hello.len());
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("a static response head is valid");
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    if send.send_data(Bytes::from_static(WELCOME), false).is_err() {
        return;
    }
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
    }
}

/// The floor server running as a child process.
pub struct FloorProcess {
    pub pid: u32,
    pub addr: SocketAddr,
    child: Child,
    /// Closing it stops the server.
    stdin: Option<ChildStdin>,
}

impl FloorProcess {
    /// Writes the server's files under `dir` and starts `exe floor-server` (`exe` is the running
    /// loadgen) with them; returns once it listens.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        ca_pem: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let files = ServerArgs {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca_pem)?;
        std::fs::write(&files.cert, chain_pem)?;
        std::fs::write(&files.key, key_pem)?;
        let log = std::fs::File::create(dir.join("floor.log"))?;
        let mut child = Command::new(exe)
            .arg("floor-server")
            .arg("--ca")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} floor-server", exe.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(START_TIMEOUT, first).await {
            Ok(Ok(Ok(line))) => line,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the floor server did not say where it listens within {START_TIMEOUT:?} \
                     ({outcome:?}); log: {}",
                    dir.join("floor.log").display()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix(LISTENING)
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| anyhow!("unexpected first line from the floor server: {line:?}"))?;
        println!("{}: floor server pid {pid} listening on {addr}", prog());
        Ok(Self {
            pid,
            addr,
            child,
            stdin,
        })
    }

    /// Memory, threads and CPU time from `/proc/<pid>`.
    pub fn sample(&self) -> Result<ProcSample> {
        sample_pid(self.pid, "floor server")
    }

    /// Stops the server (its standard input closed, then SIGTERM after 5 s, SIGKILL after 10 s).
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut termed = false;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => {
                    if !termed && deadline - Instant::now() < Duration::from_secs(5) {
                        sigterm(self.pid);
                        termed = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A held floor connection; dropping it closes the connection.
pub struct FloorConn {
    _send: h2::SendStream<Bytes>,
    _body: RecvStream,
    driver: JoinHandle<()>,
}

impl Drop for FloorConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A connection opened by [`open`]: how long dial to Welcome took, and whether the TLS session
/// was resumed from a ticket.
pub struct Opened {
    pub conn: FloorConn,
    pub took: Duration,
    pub resumed: bool,
}

/// Opens one floor connection from `src` with `config` (a cluster's own client configuration;
/// reusing it resumes the session from its ticket).
pub async fn open(config: Arc<ClientConfig>, addr: SocketAddr, src: IpAddr) -> Result<Opened> {
    let started = Instant::now();
    let sock = match src {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(src, 0))?;
    let tcp = sock.connect(addr).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .context("TLS handshake")?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let (h2, conn) = h2::client::handshake(tls).await.context("h2 handshake")?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let exchange = async {
        let mut h2 = h2.ready().await?;
        let req = http::Request::post(format!("https://{addr}/floor.v1.Floor/Hold"))
            .header("content-type", "application/grpc")
            .body(())
            .expect("a static request head is valid");
        let (resp, mut send) = h2.send_request(req, false)?;
        send.send_data(Bytes::from_static(HELLO), false)?;
        let mut body = resp.await?.into_body();
        match body.data().await {
            Some(Ok(welcome)) => {
                let _ = body.flow_control().release_capacity(welcome.len());
                Ok((send, body))
            }
            Some(Err(e)) => Err(anyhow!(e)),
            None => Err(anyhow!("stream closed before the Welcome")),
        }
    };
    let (send, body) = match tokio::time::timeout(WELCOME_TIMEOUT, exchange).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            driver.abort();
            return Err(e.context("Hello → Welcome"));
        }
        Err(_) => {
            driver.abort();
            bail!("no Welcome within {WELCOME_TIMEOUT:?}");
        }
    };
    Ok(Opened {
        conn: FloorConn {
            _send: send,
            _body: body,
            driver,
        },
        took: started.elapsed(),
        resumed,
    })
}

/// The connections of [`open_all`] and how opening them went.
pub struct OpenedAll {
    pub conns: Vec<FloorConn>,
    /// Dial to Welcome, per opened connection.
    pub latencies: Vec<Duration>,
    /// How many of them resumed a TLS session.
    pub resumed: usize,
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    pub took: Duration,
}

/// Opens one floor connection per configuration, connection `i` from [`source_ip`]`(i,
/// sources)`, `concurrency` at a time.
pub async fn open_all(
    configs: &[Arc<ClientConfig>],
    addr: SocketAddr,
    sources: usize,
    concurrency: usize,
) -> OpenedAll {
    let started = Instant::now();
    let mut all = OpenedAll {
        conns: Vec::with_capacity(configs.len()),
        latencies: Vec::with_capacity(configs.len()),
        resumed: 0,
        failed: 0,
        errors: Vec::new(),
        took: Duration::ZERO,
    };
    let mut s = futures::stream::iter(configs.iter().enumerate())
        .map(|(i, cfg)| open(cfg.clone(), addr, source_ip(i, sources)))
        .buffer_unordered(concurrency);
    while let Some(r) = s.next().await {
        match r {
            Ok(o) => {
                all.resumed += usize::from(o.resumed);
                all.latencies.push(o.took);
                all.conns.push(o.conn);
            }
            Err(e) => {
                all.failed += 1;
                if all.errors.len() < 5 {
                    all.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    all.took = started.elapsed();
    println!(
        "{}: opened {} floor connections in {:.1} s ({:.0}/s, {} resumed), {} failed",
        prog(),
        all.conns.len(),
        all.took.as_secs_f64(),
        all.conns.len() as f64 / all.took.as_secs_f64(),
        all.resumed,
        all.failed
    );
    all
}
