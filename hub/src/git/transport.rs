//! Per-fetch transport set-up: the ssh command (batch mode, connect timeout), the https client
//! (rustls with ring, timeouts), credentials handed to gix through its callback, a watchdog
//! that interrupts a fetch past its deadline, and turning gix errors into [`GitError`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gix::protocol::transport::client::blocking_io::http;

use super::auth::{Auth, RemoteUrl, Scrubber, Transport};
use super::{FetchOptions, GitError};

/// Makes `repo` (a per-fetch handle) spawn ssh non-interactively with a connect timeout,
/// unless the operator chose an ssh command (`GIT_SSH_COMMAND`, `core.sshCommand`).
pub(crate) fn configure_ssh(repo: &mut gix::Repository, opts: &FetchOptions) -> gix::Result<()> {
    let configured = std::env::var_os("GIT_SSH_COMMAND").is_some()
        || std::env::var_os("GIT_SSH").is_some()
        || repo.config_snapshot().string("core.sshCommand").is_some();
    if configured {
        return Ok(());
    }
    let secs = opts.connect_timeout.as_secs().max(1);
    let command = format!(
        "ssh -o BatchMode=yes -o ConnectTimeout={secs} -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    );
    let mut config = repo.config_snapshot_mut();
    config.set_value(&gix::config::tree::Core::SSH_COMMAND, command.as_str())?;
    config.set_value(&gix::config::tree::Ssh::VARIANT, "ssh")?;
    config.commit()?;
    Ok(())
}

/// The transport options for an https fetch: git's http settings from the repository config,
/// plus our client timeouts and extra trusted CAs. `None` for other transports.
pub(crate) fn http_options(
    repo: &gix::Repository,
    url: &RemoteUrl,
    opts: &FetchOptions,
    extra_roots: Vec<reqwest::Certificate>,
) -> gix::Result<Option<Box<dyn std::any::Any>>> {
    if url.transport != Transport::Https {
        return Ok(None);
    }
    ensure_crypto_provider();
    let base = repo.transport_options(url.fetch.as_str(), None)?;
    let mut http: http::Options = base
        .and_then(|b| b.downcast::<http::Options>().ok())
        .map(|b| *b)
        .unwrap_or_default();
    let connect_timeout = opts.connect_timeout;
    let request_timeout = opts.timeout;
    let reqwest_options = http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(builder
                .connect_timeout(connect_timeout)
                .timeout(request_timeout)
                .tls_certs_merge(extra_roots.clone()))
        })),
        configure_request: None,
    };
    http.backend = Some(Arc::new(Mutex::new(reqwest_options)));
    http.connect_timeout = Some(connect_timeout);
    Ok(Some(Box::new(http)))
}

/// The extra CA certificates trusted for https: [`FetchOptions::ca_file`], else git's
/// `http.sslCAInfo`, else none (the system roots only).
pub(crate) fn extra_roots(
    repo: &gix::Repository,
    url: &RemoteUrl,
    opts: &FetchOptions,
) -> Result<Vec<reqwest::Certificate>, GitError> {
    if url.transport != Transport::Https {
        return Ok(Vec::new());
    }
    let configured = || {
        repo.config_snapshot()
            .trusted_path("http.sslCAInfo")
            .ok()
            .flatten()
    };
    let Some(path) = opts.ca_file.clone().or_else(configured) else {
        return Ok(Vec::new());
    };
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| GitError::CaFile {
        path: path.clone(),
        source,
    };
    let pem = std::fs::read(&path).map_err(|e| bad(e.into()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.into()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificates in it".into()));
    }
    Ok(certs)
}

/// reqwest is built without a default crypto provider (the hub uses ring everywhere, never
/// aws-lc): install ring as the process default unless something else already did.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing a provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The credential callback handed to gix: answers `get` with `auth` (or nothing), ignores
/// `store`/`erase`. It never asks a helper or a terminal.
pub(crate) fn credentials(
    auth: Option<Auth>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    move |action| match (action, &auth) {
        (gix::credentials::helper::Action::Get(ctx), Some(auth)) => {
            let (user, password) = auth.user_password();
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: user.to_owned(),
                    password: password.to_owned(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            }))
        }
        _ => Ok(None),
    }
}

/// Sets an interrupt flag when a fetch runs past its deadline; gix checks the flag while it
/// negotiates and receives the pack. Stops (and joins its thread) when dropped.
pub(crate) struct Watchdog {
    flag: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(deadline: Duration) -> Watchdog {
        let flag = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let fire = flag.clone();
        let thread = std::thread::Builder::new()
            .name("git-fetch-watchdog".into())
            .spawn(move || {
                // Disconnected (the fetch ended) or a timeout: only the latter fires.
                if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(deadline) {
                    fire.store(true, Ordering::SeqCst);
                }
            })
            .ok();
        Watchdog {
            flag,
            stop: Some(stop),
            thread,
        }
    }

    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    pub(crate) fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Turns a gix failure while talking to the remote into a [`GitError`] naming the redacted
/// URL, with the whole cause chain on one line and every secret scrubbed.
pub(crate) fn fetch_error(
    err: &gix::Error,
    url: &RemoteUrl,
    scrub: &Scrubber,
    watchdog: &Watchdog,
    opts: &FetchOptions,
    has_auth: bool,
) -> GitError {
    let display = url.display.clone();
    if watchdog.fired() || timed_out(err) {
        return GitError::Timeout {
            url: display,
            connect: opts.connect_timeout,
            total: opts.timeout,
        };
    }
    let message = scrub.scrub(&one_line(err));
    let class = err.dominant_class();
    let auth_failure = matches!(
        class,
        Some(gix::error::Class::Unauthenticated | gix::error::Class::PermissionDenied)
    ) || message.contains("Permission denied")
        || message.contains(" 401")
        || message.contains(" 403");
    if auth_failure {
        let message = if url.transport == Transport::Https && !has_auth {
            // gix's own words blame a credential helper, which the hub never uses.
            "the server asks for credentials and the source has none (give it a secret file)"
                .to_owned()
        } else {
            message
        };
        GitError::AuthFailed {
            url: display,
            message,
        }
    } else {
        GitError::Fetch {
            url: display,
            message,
        }
    }
}

/// Whether a cause of `err` is a network timeout (reqwest's own, or an I/O one).
fn timed_out(err: &gix::Error) -> bool {
    err.iter_errors().any(|cause| {
        cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// A gix error and its causes on one line (`a: b: c`), without repeated parts.
pub(crate) fn one_line(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.iter_errors() {
        let text = cause.to_string();
        let text = text.trim().trim_end_matches('.');
        // gix's placeholders for an I/O error whose payload comes next.
        if text.is_empty() || (text.starts_with("I/O error (") && text.ends_with(')')) {
            continue;
        }
        if !parts.iter().any(|p| p == text) {
            parts.push(text.to_owned());
        }
    }
    if parts.is_empty() {
        return err.to_string();
    }
    parts.join(": ")
}
