//! Running a rendering tool (`kubectl kustomize`, `helm template`) as a sandboxed child process:
//! a time limit, a cap on what it may print, a clean environment (nothing of the hub's: no
//! credentials, no kubeconfig, no cloud variables), a throw-away home, and no network unless the
//! source allows it.
//!
//! No network: the child runs in a network namespace of its own (util-linux `unshare --net`, as
//! root, or `unshare --user --map-root-user --net` where user namespaces are allowed), which has
//! no interface but a loopback that is down. Where neither works (a container without the
//! privilege), the child gets proxy variables that point at a closed port and git may use no
//! transport, which stops Go's HTTP clients (helm, kustomize) and git; `Isolation` says which
//! one is in force and the hub's readiness shows it.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// What a tool's stderr contributes to an error message, at most.
const MAX_STDERR: u64 = 16 << 10;

/// The sub-directories of a tool's home its environment names.
const HOME_DIRS: [&str; 4] = ["tmp", "cache", "config", "data"];

/// How long the output pipes may stay open after the tool's process group ended.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// How a tool is cut off from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// `unshare --net`: a network namespace with no interface up.
    Namespace,
    /// `unshare --user --map-root-user --net`: the same, through a user namespace.
    UserNamespace,
    /// Proxy variables to a closed port and no git transport (no namespace could be made).
    Environment,
}

impl Isolation {
    /// Finds the strongest isolation this machine allows, by running `true` under each.
    pub fn probe() -> Isolation {
        for isolation in [Isolation::Namespace, Isolation::UserNamespace] {
            let mut cmd = Command::new("unshare");
            cmd.args(isolation.unshare_args())
                .arg("--")
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if cmd.status().is_ok_and(|s| s.success()) {
                return isolation;
            }
        }
        Isolation::Environment
    }

    fn unshare_args(self) -> &'static [&'static str] {
        match self {
            Isolation::Namespace => &["--net"],
            Isolation::UserNamespace => &["--user", "--map-root-user", "--net"],
            Isolation::Environment => &[],
        }
    }

    /// How it reads in status and readiness.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespace => "network namespace",
            Isolation::UserNamespace => "user and network namespace",
            Isolation::Environment => "proxy variables only (no namespace allowed here)",
        }
    }
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub timeout: Duration,
    /// The most a tool may print on stdout (its rendered manifests).
    pub max_output: u64,
    /// Whether the tool may reach the network (a source that allows it).
    pub network: bool,
    pub isolation: Isolation,
}

/// One command to run: the binary, its arguments, the directory it runs in.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub bin: &'a Path,
    pub args: Vec<OsString>,
    pub dir: &'a Path,
    /// A throw-away directory for the tool's home, caches and temporary files.
    pub home: &'a Path,
}

/// Why a run failed; the message is what users read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {bin}: {message}")]
    Spawn { bin: String, message: String },
    #[error("did not finish within {0:?}; stopped")]
    Timeout(Duration),
    #[error("printed more than {0} bytes; stopped")]
    OutputTooLarge(u64),
    #[error("{0}")]
    Failed(String),
}

/// Runs `inv` within `bounds` and returns what it printed on stdout.
pub fn run(inv: &Invocation<'_>, bounds: &Bounds) -> Result<Vec<u8>, RunError> {
    // The directories the environment points the tool at (`TMPDIR`, the XDG and Helm homes).
    for sub in HOME_DIRS {
        std::fs::create_dir_all(inv.home.join(sub)).map_err(|e| RunError::Spawn {
            bin: inv.bin.display().to_string(),
            message: format!("its home {}: {e}", inv.home.display()),
        })?;
    }
    let mut cmd = command(inv, bounds);
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn {
        bin: inv.bin.display().to_string(),
        message: e.to_string(),
    })?;
    let over = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let limit = bounds.max_output;
    let flag = over.clone();
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || out_tx.send(read_capped(stdout, limit, &flag)));
    std::thread::spawn(move || {
        err_tx.send(read_capped(stderr, MAX_STDERR, &AtomicBool::new(false)))
    });
    let status = wait(&mut child, bounds.timeout, &over);
    // The tool's process group is gone by now (exited, or killed); a process that left it and
    // still holds the pipes is not waited for.
    let stdout = out_rx.recv_timeout(PIPE_GRACE);
    let stderr = err_rx.recv_timeout(PIPE_GRACE).unwrap_or_default();
    let stdout = match (&status, stdout) {
        (Waited::Exited(Ok(s)), Err(_)) if s.success() => {
            return Err(RunError::Failed(
                "exited, but a process it started still holds its output; stopped".into(),
            ));
        }
        (_, out) => out.unwrap_or_default(),
    };
    match status {
        Waited::TimedOut => Err(RunError::Timeout(bounds.timeout)),
        Waited::OverCap => Err(RunError::OutputTooLarge(limit)),
        Waited::Exited(Ok(status)) if status.success() => Ok(stdout),
        Waited::Exited(Ok(status)) => {
            let text = String::from_utf8_lossy(&stderr);
            let text = text.trim();
            Err(RunError::Failed(if text.is_empty() {
                format!("exited with {status} and printed no error")
            } else {
                text.to_owned()
            }))
        }
        Waited::Exited(Err(e)) => Err(RunError::Failed(format!("waiting for it: {e}"))),
    }
}

/// The command, with its clean environment and, without network, inside `unshare`.
fn command(inv: &Invocation<'_>, bounds: &Bounds) -> Command {
    let isolate = !bounds.network && bounds.isolation != Isolation::Environment;
    let mut cmd = if isolate {
        let mut c = Command::new("unshare");
        c.args(bounds.isolation.unshare_args())
            .arg("--")
            .arg(inv.bin);
        c
    } else {
        Command::new(inv.bin)
    };
    // A group of its own, so that stopping it stops what it started too (kustomize runs git).
    cmd.process_group(0);
    cmd.args(&inv.args)
        .current_dir(inv.dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let home = inv.home;
    let under = |rest: &str| -> PathBuf { home.join(rest) };
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
    )
    .env("HOME", home)
    .env("TMPDIR", under("tmp"))
    .env("LANG", "C.UTF-8")
    .env("XDG_CACHE_HOME", under("cache"))
    .env("XDG_CONFIG_HOME", under("config"))
    .env("XDG_DATA_HOME", under("data"))
    .env("HELM_CACHE_HOME", under("cache/helm"))
    .env("HELM_CONFIG_HOME", under("config/helm"))
    .env("HELM_DATA_HOME", under("data/helm"))
    .env("KUBECONFIG", under("no-kubeconfig"))
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_TERMINAL_PROMPT", "0");
    if !bounds.network {
        // Belt and braces inside a namespace; the only barrier where none could be made.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env(var, "http://127.0.0.1:9");
        }
        cmd.env("GIT_ALLOW_PROTOCOL", "none");
    }
    cmd
}

enum Waited {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    OverCap,
}

/// Waits for `child` until it exits, `timeout` passes or its output went over the cap; kills it
/// in the last two cases.
fn wait(child: &mut Child, timeout: Duration, over: &AtomicBool) -> Waited {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            kill(child);
            return Waited::TimedOut;
        }
        let slice = (deadline - now).min(Duration::from_millis(50));
        match child.wait_timeout(slice) {
            Ok(Some(status)) => {
                return if over.load(Ordering::Relaxed) {
                    Waited::OverCap
                } else {
                    Waited::Exited(Ok(status))
                };
            }
            Ok(None) if over.load(Ordering::Relaxed) => {
                kill(child);
                return Waited::OverCap;
            }
            Ok(None) => {}
            Err(e) => {
                kill(child);
                return Waited::Exited(Err(e));
            }
        }
    }
}

/// Stops the tool's whole process group (it leads one: `process_group(0)`), then reaps it.
fn kill(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `from` to its end, keeping at most `limit` bytes; sets `over` (and stops keeping) once
/// there is more.
fn read_capped(from: impl Read, limit: u64, over: &AtomicBool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut from = from.take(limit + 1);
    let _ = from.read_to_end(&mut kept);
    if kept.len() as u64 > limit {
        kept.truncate(limit as usize);
        over.store(true, Ordering::Relaxed);
        // Drain the rest so the child is never blocked writing while it is being stopped.
        let _ = std::io::copy(&mut from.into_inner(), &mut std::io::sink());
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, bounds: Bounds) -> Result<Vec<u8>, RunError> {
        let home = tempfile::tempdir().unwrap();
        let inv = Invocation {
            bin: Path::new("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            dir: home.path(),
            home: home.path(),
        };
        run(&inv, &bounds)
    }

    fn bounds() -> Bounds {
        Bounds {
            timeout: Duration::from_secs(20),
            max_output: 1 << 20,
            network: false,
            isolation: Isolation::probe(),
        }
    }

    #[test]
    fn output_error_timeout_and_cap() {
        assert_eq!(sh("printf hello", bounds()).unwrap(), b"hello");
        assert_eq!(
            sh("echo 'bad chart' >&2; exit 3", bounds()),
            Err(RunError::Failed("bad chart".into()))
        );
        let short = Bounds {
            timeout: Duration::from_millis(200),
            ..bounds()
        };
        assert_eq!(
            sh("sleep 30", short),
            Err(RunError::Timeout(Duration::from_millis(200)))
        );
        let small = Bounds {
            max_output: 1000,
            ..bounds()
        };
        assert_eq!(
            sh("yes manifest", small),
            Err(RunError::OutputTooLarge(1000))
        );
    }

    #[test]
    fn the_environment_is_clean_and_the_home_is_throw_away() {
        // SAFETY of the test: a variable the hub holds must not reach the tool.
        let out = sh("env", bounds()).unwrap();
        let env = String::from_utf8(out).unwrap();
        assert!(!env.contains("CARGO"), "{env}");
        assert!(env.contains("KUBECONFIG="), "{env}");
        assert!(env.contains("HTTPS_PROXY=http://127.0.0.1:9"), "{env}");
        let allowed = Bounds {
            network: true,
            ..bounds()
        };
        let env = String::from_utf8(sh("env", allowed).unwrap()).unwrap();
        assert!(!env.contains("HTTPS_PROXY"), "{env}");
    }

    #[test]
    fn without_network_nothing_can_be_reached() {
        // A listener on the host's loopback: reachable with network, not without.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let isolation = Isolation::probe();
        if isolation == Isolation::Environment {
            eprintln!("no network namespace can be made here; only the environment is checked");
            return;
        }
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo reached");
        let bash = |network| {
            let home = tempfile::tempdir().unwrap();
            let inv = Invocation {
                bin: Path::new("/bin/bash"),
                args: vec!["-c".into(), probe.clone().into()],
                dir: home.path(),
                home: home.path(),
            };
            run(
                &inv,
                &Bounds {
                    network,
                    ..bounds()
                },
            )
        };
        assert_eq!(bash(true).unwrap(), b"reached\n");
        assert!(
            matches!(bash(false), Err(RunError::Failed(_))),
            "{:?}",
            bash(false)
        );
    }
}
