//! The hub under test, run as a child process: start on free loopback ports, wait for
//! readiness, watch for an unexpected exit, read its memory and CPU from `/proc`, and stop it
//! with SIGTERM.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::prog;

/// Exit status of `flotilla-hub` for configuration errors, including a port that cannot be bound.
const EXIT_CONFIG: i32 = 64;
/// Attempts with fresh ports when the hub cannot bind (another process took a port in between).
const START_ATTEMPTS: usize = 5;
/// How long the hub may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// One sample of the hub's process state.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB.
    pub hwm_kib: u64,
    pub threads: u64,
    /// User plus system CPU time consumed so far, seconds.
    pub cpu_secs: f64,
}

/// A running `flotilla-hub serve`.
pub struct HubProcess {
    pub pid: u32,
    /// `host:port` of the gRPC (mutual TLS) port.
    pub addr: String,
    pub http: SocketAddr,
    /// The directory it was started in: its data dir and its log are there.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Arc<Mutex<Child>>,
    /// Becomes `Some(description)` when the process exits on its own.
    exited: watch::Receiver<Option<String>>,
    monitor: JoinHandle<()>,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")
        .context("binding 127.0.0.1:0 to find a free port")?
        .local_addr()?
        .port())
}

impl HubProcess {
    /// Starts the hub with its data dir and log under `dir`, and waits until `/readyz` answers
    /// 200 and the admin credential exists.
    pub async fn start(bin: &Path, dir: &Path, heartbeat_interval: &str) -> Result<Self> {
        Self::start_with(bin, dir, heartbeat_interval, &[]).await
    }

    /// [`HubProcess::start`] with extra `serve` flags.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        heartbeat_interval: &str,
        extra: &[String],
    ) -> Result<Self> {
        Self::start_on(bin, dir, heartbeat_interval, extra, None).await
    }

    /// [`HubProcess::start_with`] on the gRPC and HTTP ports `ports` chosen beforehand (hub
    /// replicas are told each other's endpoints before they start), tried once; `None`: free
    /// ports, tried again on others when the hub cannot bind.
    pub async fn start_on(
        bin: &Path,
        dir: &Path,
        heartbeat_interval: &str,
        extra: &[String],
        ports: Option<(u16, u16)>,
    ) -> Result<Self> {
        let data_dir = dir.join("data");
        let log_path = dir.join("hub.log");
        let attempts = if ports.is_some() { 1 } else { START_ATTEMPTS };
        for attempt in 1..=attempts {
            let (grpc_port, http_port) = match ports {
                Some(p) => p,
                None => {
                    let grpc_port = free_port()?;
                    let mut http_port = free_port()?;
                    while http_port == grpc_port {
                        http_port = free_port()?;
                    }
                    (grpc_port, http_port)
                }
            };
            let addr = format!("127.0.0.1:{grpc_port}");
            let http: SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut child = Command::new(bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen", &addr])
                .args(["--http-listen", &http.to_string()])
                .args(["--heartbeat-interval", heartbeat_interval])
                .args(extra)
                // Plain log lines, so that the tail printed on failure is readable.
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let pid = child.id();
            let deadline = Instant::now() + READY_TIMEOUT;
            let ready = loop {
                if let Some(status) = child.try_wait()? {
                    break Err(status);
                }
                if let Ok((200, _)) = http_get(http, "/readyz").await {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "hub did not become ready within {READY_TIMEOUT:?}; log {}:\n{}",
                        log_path.display(),
                        log_tail(&log_path, 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if let Err(status) = ready {
                let tail = log_tail(&log_path, 30);
                if status.code() == Some(EXIT_CONFIG)
                    && tail.contains("listen")
                    && attempt < attempts
                {
                    eprintln!(
                        "{}: hub could not bind (attempt {attempt}), retrying on other ports",
                        prog()
                    );
                    continue;
                }
                bail!(
                    "hub exited during start-up ({status}); log {}:\n{tail}",
                    log_path.display()
                );
            }
            let admin = data_dir.join("admin.yaml");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !admin.exists() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("hub is ready but {} did not appear", admin.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let child = Arc::new(Mutex::new(child));
            let (tx, exited) = watch::channel(None);
            let watched = child.clone();
            let monitor = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let st = watched.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
                    match st {
                        Ok(None) => continue,
                        Ok(Some(s)) => {
                            let _ = tx.send(Some(s.to_string()));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Some(format!("cannot wait for the hub: {e}")));
                            return;
                        }
                    }
                }
            });
            return Ok(Self {
                pid,
                addr,
                http,
                dir: dir.to_path_buf(),
                data_dir,
                log_path,
                child,
                exited,
                monitor,
            });
        }
        Err(anyhow!(
            "hub could not bind free ports in {attempts} attempts"
        ))
    }

    /// Says where the hub serves and keeps its data and log.
    pub fn announce(&self) {
        println!(
            "{}: hub pid {} serving {} (HTTP {}), data and log in {}",
            prog(),
            self.pid,
            self.addr,
            self.http,
            self.dir.display()
        );
    }

    /// Resolves when the hub exits on its own, with a description of how it ended.
    pub async fn died(&self) -> String {
        let mut rx = self.exited.clone();
        match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "hub monitor stopped".to_string(),
        }
    }

    /// How the hub ended, when it has exited on its own.
    pub fn exit_status(&self) -> Option<String> {
        if let Some(why) = self.exited.borrow().clone() {
            return Some(why);
        }
        match self.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// The child's exit status if it has exited, without waiting.
    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
    }

    /// Runs `work` unless the hub exits first: then the error says how the hub ended, with the
    /// end of its log.
    pub async fn unless_died<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = work => r,
            why = self.died() => Err(anyhow!(self.exited_note(&why))),
        }
    }

    /// [`HubProcess::unless_died`]; and when `work` failed first but the hub has exited too (the
    /// likely cause), its error says so.
    pub async fn supervise<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let outcome = self.unless_died(work).await;
        match (outcome, self.exit_status()) {
            (Err(e), Some(why)) if !format!("{e}").contains("exited unexpectedly") => {
                Err(e.context(self.exited_note(&why)))
            }
            (o, _) => o,
        }
    }

    fn exited_note(&self, why: &str) -> String {
        format!(
            "the hub exited unexpectedly ({why}); last lines of {}:\n{}",
            self.log_path.display(),
            self.log_tail(15)
        )
    }

    /// Kills the hub with SIGKILL (no clean stop: its sessions and its etcd lease are left as
    /// a crash leaves them) and reaps it; the monitor then reports it as exited.
    pub fn kill9(&self) -> Result<ExitStatus> {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        c.kill().context("sending SIGKILL to the hub")?;
        Ok(c.wait()?)
    }

    /// Memory, threads and CPU time from `/proc/<pid>`.
    pub fn sample(&self) -> Result<ProcSample> {
        sample_pid(self.pid, "hub")
    }

    /// The last `n` lines of the hub's log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }

    /// Stops the hub (SIGTERM, up to 30 s) and says how it ended.
    pub async fn shutdown(self) {
        println!("{}: stopping the hub (SIGTERM)", prog());
        match self.stop(Duration::from_secs(30)).await {
            Ok(st) if st.success() => println!("{}: hub exited cleanly", prog()),
            Ok(st) => eprintln!("{}: hub exited with {st}", prog()),
            Err(e) => eprintln!("{}: stopping the hub: {e:#}", prog()),
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the hub to exit, then kills it.
    pub async fn stop(self, grace: Duration) -> Result<ExitStatus> {
        self.monitor.abort();
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        sigterm(self.pid);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{}: hub did not exit within {grace:?} of SIGTERM; killing it",
                    prog()
                );
                let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
                let _ = c.kill();
                return Ok(c.wait()?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Asks process `pid` to end (SIGTERM, sent with `kill`); whether it did shows in waiting for
/// it.
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The text of `/proc/<pid>/status`.
pub struct ProcStatus(String);

impl ProcStatus {
    /// Reads it for process `pid`; `what` names the process in the error when it cannot be read.
    pub fn read(pid: u32, what: &str) -> Result<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(Self)
            .with_context(|| format!("reading the {what}'s /proc status (did it exit?)"))
    }

    /// The number of the field `name` (with its colon: `VmRSS:`), 0 when it is missing.
    pub fn field(&self, name: &str) -> u64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Memory, threads and CPU time of process `pid` from `/proc/<pid>`; `what` names the process
/// in the error when it cannot be read.
pub fn sample_pid(pid: u32, what: &str) -> Result<ProcSample> {
    let status = ProcStatus::read(pid, what)?;
    let field = |name: &str| status.field(name);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15 (1-based); `after` starts at field 3.
    let cpu = (ticks(14 - 3) + ticks(15 - 3)) as f64 / CLOCK_TICKS;
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        cpu_secs: cpu,
    })
}

/// The end of a log for an error message: its last warnings and errors (up to `n`), then its
/// last `n` lines, without terminal colour codes.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = strip_ansi(&String::from_utf8_lossy(&buf));
    let lines: Vec<&str> = text.lines().collect();
    let problems: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("flotilla-hub:"))
        .collect();
    let mut out = String::new();
    if !problems.is_empty() {
        out.push_str("  warnings and errors:\n    ");
        out.push_str(&problems[problems.len().saturating_sub(n)..].join("\n    "));
        out.push('\n');
    }
    out.push_str("  last lines:\n    ");
    out.push_str(&lines[lines.len().saturating_sub(n)..].join("\n    "));
    out
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the sample `name` (exactly, labels included) in a Prometheus/OpenMetrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A minimal HTTP/1.1 GET over loopback: returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"").await
}

/// A minimal HTTP/1.1 POST over loopback with extra headers: returns the status code and the
/// body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    http_request(addr, "POST", path, headers, body).await
}

/// One HTTP/1.1 request with `Connection: close`, bounded to 10 s.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        s.write_all(&bytes).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP response from {addr}{path}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no status in HTTP response from {addr}{path}"))?;
        Ok::<_, anyhow::Error>((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow!("{method} {addr}{path} timed out"))?
}

/// Reads the hub's metrics text.
pub async fn metrics(hub: &HubProcess) -> Result<String> {
    match http_get(hub.http, "/metrics").await? {
        (200, body) => Ok(body),
        (s, _) => bail!("GET /metrics answered {s}"),
    }
}

/// Polls the hub's `flotilla_hub_sessions_connected` gauge until it equals `want` or `timeout`
/// passes; returns the last value read.
pub async fn wait_for_gauge(hub: &HubProcess, want: usize, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = metrics(hub).await?;
        let v = metric(&text, "flotilla_hub_sessions_connected").unwrap_or(-1.0);
        if v >= 0.0 && v as usize == want {
            return Ok(want);
        }
        if Instant::now() > deadline {
            eprintln!("{}: hub reports {v} sessions, expected {want}", prog());
            return Ok(v.max(0.0) as usize);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines() {
        let t = "# TYPE x gauge\nflotilla_hub_sessions_connected 42\nflotilla_hub_sessions_connected_x 1\nflotilla_hub_tls_handshakes_total{result=\"ok\"} 7\n";
        assert_eq!(metric(t, "flotilla_hub_sessions_connected"), Some(42.0));
        assert_eq!(
            metric(t, "flotilla_hub_tls_handshakes_total{result=\"ok\"}"),
            Some(7.0)
        );
        assert_eq!(metric(t, "nope"), None);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mts\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "ts  INFO x"
        );
    }
}
