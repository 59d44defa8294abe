//! The demo's processes: a `flotilla-hub` and one `flotilla-agent` per cluster, the real
//! binaries found beside `flotilla` (or on `PATH`), each logging to a file of the demo's
//! directory. They are killed when the demo ends, and with it if it dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::super::client::CliError;

/// How often the demo looks again for something it waits for.
const POLL: Duration = Duration::from_millis(100);

/// The hub or an agent the demo started.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `binary` with `args`; stdout and stderr go to `logs/NAME.log`.
    fn spawn(name: &str, binary: &Path, args: &[&str], logs: &Path) -> Result<Self, CliError> {
        std::fs::create_dir_all(logs)
            .map_err(|e| CliError(format!("cannot create {}: {e}", logs.display())))?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| CliError(format!("cannot create {}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| CliError(format!("{}: {e}", log.display())))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError(format!("cannot start {}: {e}", binary.display())))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// An error when the process has exited: its status and the last line it logged.
    pub fn exited(&mut self) -> Option<CliError> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(CliError(format!(
            "{} exited ({status}): {}",
            self.name,
            self.last_line()
        )))
    }

    /// The last line the process logged (for error messages).
    pub fn last_line(&self) -> String {
        std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(nothing logged)".into())
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The hub and the agents, with where they log.
#[derive(Debug)]
pub struct Processes {
    hub_bin: PathBuf,
    agent_bin: PathBuf,
    logs: PathBuf,
    pub hub: Option<Proc>,
    pub agents: Vec<Proc>,
}

impl Processes {
    /// Finds both binaries before anything starts; logs go to `logs`.
    pub fn new(logs: PathBuf) -> Result<Self, CliError> {
        Ok(Processes {
            hub_bin: binary("flotilla-hub")?,
            agent_bin: binary("flotilla-agent")?,
            logs,
            hub: None,
            agents: Vec::new(),
        })
    }

    /// Starts `flotilla-hub serve` on `listen` with its data in `data_dir`, and waits (until
    /// `deadline`) for the admin credential it writes there. Returns the credential's path.
    pub async fn start_hub(
        &mut self,
        data_dir: &Path,
        listen: &str,
        deadline: Instant,
    ) -> Result<PathBuf, CliError> {
        let data = data_dir.display().to_string();
        let args = [
            "serve",
            "--data-dir",
            &data,
            "--listen",
            listen,
            "--http-listen",
            "127.0.0.1:0",
        ];
        let hub = self
            .hub
            .insert(Proc::spawn("hub", &self.hub_bin, &args, &self.logs)?);
        let cred = data_dir.join("admin.yaml");
        loop {
            if flotilla_proto::credential::AdminCredential::load(&cred).is_ok() {
                return Ok(cred);
            }
            if let Some(e) = hub.exited() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(CliError(format!(
                    "the hub wrote no {} in time: {}",
                    cred.display(),
                    hub.last_line()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts an agent for cluster `name` that joins with `token` and drives a simulated
    /// cluster, its state in `state_dir`.
    pub fn start_agent(
        &mut self,
        name: &str,
        token: &str,
        state_dir: &Path,
        health_poll: Duration,
    ) -> Result<(), CliError> {
        let state = state_dir.display().to_string();
        let poll = humantime::format_duration(health_poll).to_string();
        let args = [
            "--join",
            token,
            "--state-dir",
            &state,
            "--cluster",
            "simulated",
            "--health-poll",
            &poll,
            "--metrics-listen",
            "off",
        ];
        let agent = Proc::spawn(name, &self.agent_bin, &args, &self.logs)?;
        self.agents.push(agent);
        Ok(())
    }

    /// The first process that exited, as an error.
    pub fn exited(&mut self) -> Option<CliError> {
        self.hub
            .iter_mut()
            .chain(self.agents.iter_mut())
            .find_map(Proc::exited)
    }

    /// Stops the agents, then the hub.
    pub async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
        if let Some(h) = self.hub {
            h.stop().await;
        }
    }
}

/// `name` beside the running `flotilla`, else on `PATH`.
fn binary(name: &str) -> Result<PathBuf, CliError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError(format!(
                "flotilla demo runs the {name} binary, found neither beside flotilla nor on PATH \
                 (build all three: cargo build --release)"
            ))
        })
}
