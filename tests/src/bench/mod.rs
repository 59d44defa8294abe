//! Shared pieces of the benchmark programs (`loadgen`, `deliverybench`, `agentbench`,
//! `promotebench`, `statusbench`): the hub under test as a child process ([`hub`]), lightweight
//! session clients and their enrollment ([`client`], [`fleet`]), status reporters counting the
//! hub's acknowledgements ([`reporter`]), the bare tokio-rustls + h2 server and clients the hub
//! is measured against ([`floor`]), latency summaries ([`stats`]), the programs' frame
//! (exit status, temporary directory, JSON report: [`program`]), their tables ([`table`]), and
//! the hub as several replicas on a 3-member etcd for the HA mode of `loadgen` and
//! `promotebench` ([`replicas`]).
//!
//! Everything here talks to the hub over loopback only, and every loop is bounded in count and
//! time. Progress and warnings are printed prefixed with the program's name ([`prog`]).

pub mod bundle;
pub mod client;
pub mod fleet;
pub mod floor;
pub mod hub;
pub mod otlp;
pub mod program;
pub mod replicas;
pub mod reporter;
pub mod stats;
pub mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use flotilla_proto::credential::AdminCredential;
use flotilla_proto::tls::{TlsDialer, error_chain, mtls_client_config};
use flotilla_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use self::hub::HubProcess;

/// The running program's name (`loadgen`, `deliverybench`), for message prefixes.
pub fn prog() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "bench".into())
    })
}

/// Runs `git` in `dir` as the benchmark (author named after the program; no hooks, no signing,
/// no background gc, no prompts); returns its trimmed stdout, or its stderr as the error.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", &format!("user.name={}", prog())])
        .args(["-c", &format!("user.email={}@example.invalid", prog())])
        .args(["-c", "commit.gpgSign=false"])
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(["-c", "gc.auto=0"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `flotilla-hub` next to the running executable (both are built into the same target dir).
pub fn default_hub_bin() -> Result<PathBuf> {
    sibling_bin("flotilla-hub")
}

/// `flotilla-agent` next to the running executable.
pub fn default_agent_bin() -> Result<PathBuf> {
    sibling_bin("flotilla-agent")
}

/// The program `name` in the directory of the running executable.
fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    Ok(exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .join(name))
}

/// An Admin API client with the hub's own admin credential (`<data dir>/admin.yaml`).
pub async fn admin_client(hub: &HubProcess) -> Result<AdminClient<Channel>> {
    admin_client_at(&hub.data_dir).await
}

/// An Admin API client with the admin credential the hub wrote into `data_dir`.
pub async fn admin_client_at(data_dir: &Path) -> Result<AdminClient<Channel>> {
    let cred = AdminCredential::load(&data_dir.join("admin.yaml"))?;
    let channel = TlsDialer::new(mtls_client_config(&cred.ca, &cred.cert, &cred.key)?)
        .channel(&cred.hub)
        .await
        .map_err(|e| anyhow!("admin connection to {}: {}", cred.hub, error_chain(&e)))?;
    Ok(AdminClient::new(channel))
}
