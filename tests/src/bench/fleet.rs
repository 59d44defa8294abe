//! The two bulk phases every session benchmark starts with: enroll N clusters (AddCluster +
//! Join with a fresh key and CSR each) and open N sessions (one mutual-TLS handshake each: full
//! the first time, resumed from the hub's ticket when a cluster opens again), both with bounded
//! concurrency, progress lines and a summary line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use flotilla_proto::tls::{TlsDialer, bootstrap_client_config, error_chain};
use flotilla_proto::v1::admin_client::AdminClient;
use futures::StreamExt;
use tonic::transport::Channel;

use super::client::{
    DesiredHandler, Enrolled, Fleet, Session, add_cluster, cluster_name, join, open_session,
    source_ip,
};
use super::prog;

/// How often progress lines are printed during long phases.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How many error messages are kept as examples.
const ERROR_EXAMPLES: usize = 5;

/// Largest share of a run's sessions that may fail (to enroll, to open, or by ending early)
/// before the run is declared failed.
pub const MAX_FAILURE_RATIO: f64 = 0.01;

/// Whether `failed` of `of` sessions is more than [`MAX_FAILURE_RATIO`].
pub fn too_many_failures(failed: usize, of: usize) -> bool {
    failed as f64 > of as f64 * MAX_FAILURE_RATIO
}

/// Fails when the sessions that `ended` early, with the `failed_before` that never opened, are
/// too many of `n`; `examples` says how the first ones ended.
pub fn check_ended_early(
    ended: usize,
    failed_before: usize,
    n: usize,
    examples: &[String],
) -> Result<()> {
    if too_many_failures(ended + failed_before, n) {
        bail!("{ended} sessions ended early (more than 1% failed in total); first: {examples:?}");
    }
    Ok(())
}

/// The failures of a bulk phase: how many, and the first few errors.
#[derive(Default)]
struct Failures {
    count: usize,
    examples: Vec<String>,
}

impl Failures {
    fn record(&mut self, e: anyhow::Error) {
        self.count += 1;
        if self.examples.len() < ERROR_EXAMPLES {
            self.examples.push(format!("{e:#}"));
        }
    }
}

/// The result of [`enroll`].
pub struct Enrollment {
    pub enrolled: Vec<Enrolled>,
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    pub took: Duration,
    /// How the clusters were enrolled: over this many source addresses, this many at once.
    sources: usize,
    concurrency: usize,
}

impl Enrollment {
    /// Clusters enrolled per second.
    pub fn per_sec(&self) -> f64 {
        self.enrolled.len() as f64 / self.took.as_secs_f64()
    }

    /// Fails, with the first errors, when too many of the `n` clusters could not enroll.
    pub fn check(&self, n: usize) -> Result<()> {
        if too_many_failures(self.failed, n) {
            bail!(
                "{} of {n} enrollments failed (more than 1%); first errors:\n  {}",
                self.failed,
                self.errors.join("\n  ")
            );
        }
        Ok(())
    }

    /// Opens a session for every enrolled cluster to the hub at `hub_addr`, spread over the
    /// source addresses of the enrollment and as many handshakes in flight at once.
    pub async fn open_all(
        &self,
        hub_addr: &str,
        fleet: &Arc<Fleet>,
        on_desired: Option<DesiredHandler>,
    ) -> Opened {
        self.open_spread(&[hub_addr.to_string()], fleet, on_desired)
            .await
    }

    /// [`Enrollment::open_all`] over several hub replicas: enrolled cluster `i` opens its
    /// session to `hubs[i % hubs.len()]` (round robin; the same replica every time, so a
    /// reconnect resumes the TLS session from that replica's ticket). The result says which
    /// replica each session went to.
    pub async fn open_spread(
        &self,
        hubs: &[String],
        fleet: &Arc<Fleet>,
        on_desired: Option<DesiredHandler>,
    ) -> Opened {
        let enrolled = &self.enrolled;
        let started = Instant::now();
        let mut sessions: Vec<Session> = Vec::with_capacity(enrolled.len());
        let mut latencies = Vec::with_capacity(enrolled.len());
        let mut hub_of = Vec::with_capacity(enrolled.len());
        let mut cluster_of = Vec::with_capacity(enrolled.len());
        let mut failures = Failures::default();
        {
            let on_desired = &on_desired;
            let mut s = futures::stream::iter(enrolled.iter().enumerate())
                .map(|(i, who)| {
                    let h = i % hubs.len();
                    let open = open_session(
                        who,
                        &hubs[h],
                        source_ip(i, self.sources),
                        fleet.clone(),
                        on_desired.clone(),
                    );
                    async move { (i, h, open.await) }
                })
                .buffer_unordered(self.concurrency);
            let mut last = Instant::now();
            while let Some((i, h, r)) = s.next().await {
                match r {
                    Ok((sess, took)) => {
                        sessions.push(sess);
                        latencies.push(took);
                        hub_of.push(h);
                        cluster_of.push(i);
                    }
                    Err(e) => failures.record(e),
                }
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    println!(
                        "{}:   opened {}/{} ({:.0}/s), {} failed",
                        prog(),
                        sessions.len(),
                        enrolled.len(),
                        sessions.len() as f64 / started.elapsed().as_secs_f64(),
                        failures.count,
                    );
                }
            }
        }
        let opened = Opened {
            sessions,
            latencies,
            hub_of,
            cluster_of,
            failed: failures.count,
            errors: failures.examples,
            took: started.elapsed(),
        };
        print_summary(
            &format!("opened {} sessions", opened.sessions.len()),
            opened.took,
            opened.per_sec(),
            "handshakes/s",
            opened.failed,
        );
        opened
    }

    /// The loopback source address enrolled cluster `i` connects from.
    pub fn source_of(&self, i: usize) -> std::net::IpAddr {
        source_ip(i, self.sources)
    }
}

/// Enrolls clusters `cluster_name(0..n)`: `conc` AddCluster + Join in flight at once, the joins
/// over a few shared bootstrap channels (HTTP/2 multiplexes them), one per source address.
pub async fn enroll(
    admin: &AdminClient<Channel>,
    n: usize,
    sources: usize,
    conc: usize,
) -> Result<Enrollment> {
    enroll_via(&[(admin.clone(), None)], n, sources, conc).await
}

/// [`enroll`] over several hub replicas, each an Admin API client and the `host:port` it
/// serves on: cluster `i` is added through replica `i % targets.len()` and joins over
/// bootstrap channels to that same replica.
pub async fn enroll_spread(
    targets: &[(AdminClient<Channel>, String)],
    n: usize,
    sources: usize,
    conc: usize,
) -> Result<Enrollment> {
    let targets: Vec<_> = targets
        .iter()
        .map(|(admin, addr)| (admin.clone(), Some(addr.clone())))
        .collect();
    enroll_via(&targets, n, sources, conc).await
}

/// Enrolls through `targets` in turn: each an Admin API client and the address its joins go to
/// (`None`: the address in the first token).
async fn enroll_via(
    targets: &[(AdminClient<Channel>, Option<String>)],
    n: usize,
    sources: usize,
    conc: usize,
) -> Result<Enrollment> {
    println!("{}: enrolling {n} clusters (concurrency {conc})", prog());
    let started = Instant::now();
    let (first_admin, _) = targets
        .first()
        .ok_or_else(|| anyhow!("no hub to enroll through"))?;
    let first_token = add_cluster(&mut first_admin.clone(), &cluster_name(0)).await?;
    // Per target, one bootstrap channel per source address (up to 8).
    let mut boot: Vec<Vec<Channel>> = Vec::new();
    for (_, addr) in targets {
        let addr = addr.as_deref().unwrap_or(&first_token.hub);
        let mut channels = Vec::new();
        for j in 0..sources.min(8) {
            let ch = TlsDialer::new(bootstrap_client_config(&first_token.ca)?)
                .with_local_ip(Some(source_ip(j, sources)))
                .channel(addr)
                .await
                .map_err(|e| anyhow!("bootstrap connection to {addr}: {}", error_chain(&e)))?;
            channels.push(ch);
        }
        boot.push(channels);
    }
    let mut enrolled: Vec<Enrolled> = Vec::with_capacity(n);
    let mut failures = Failures::default();
    {
        let boot = &boot;
        let first_token = &first_token;
        let mut s = futures::stream::iter(0..n)
            .map(|i| async move {
                let name = cluster_name(i);
                let t = i % targets.len();
                let token = if i == 0 {
                    first_token.clone()
                } else {
                    add_cluster(&mut targets[t].0.clone(), &name).await?
                };
                join(boot[t][i % boot[t].len()].clone(), &name, &token).await
            })
            .buffer_unordered(conc);
        let mut last = Instant::now();
        while let Some(r) = s.next().await {
            match r {
                Ok(e) => enrolled.push(e),
                Err(e) => failures.record(e),
            }
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let done = enrolled.len() + failures.count;
                println!(
                    "{}:   enrolled {done}/{n} ({:.0}/s)",
                    prog(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let enrollment = Enrollment {
        enrolled,
        failed: failures.count,
        errors: failures.examples,
        took: started.elapsed(),
        sources,
        concurrency: conc,
    };
    print_summary(
        &format!("enrolled {}", enrollment.enrolled.len()),
        enrollment.took,
        enrollment.per_sec(),
        "joins/s",
        enrollment.failed,
    );
    Ok(enrollment)
}

/// The result of [`Enrollment::open_all`].
pub struct Opened {
    pub sessions: Vec<Session>,
    /// Dial to Welcome, per opened session.
    pub latencies: Vec<Duration>,
    /// Per opened session: the index of the hub it went to (of those given to
    /// [`Enrollment::open_spread`]; 0 with one hub) and of its enrolled cluster.
    pub hub_of: Vec<usize>,
    pub cluster_of: Vec<usize>,
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    pub took: Duration,
}

impl Opened {
    /// Sessions opened per second.
    pub fn per_sec(&self) -> f64 {
        self.sessions.len() as f64 / self.took.as_secs_f64()
    }

    /// Fails, with the first errors, when the sessions that failed to open, with the
    /// `enroll_failed` clusters that could not try, are too many of `n`.
    pub fn check(&self, enroll_failed: usize, n: usize) -> Result<()> {
        if too_many_failures(self.failed + enroll_failed, n) {
            bail!(
                "{} of {n} sessions failed to open (more than 1%); first errors:\n  {}",
                self.failed,
                self.errors.join("\n  ")
            );
        }
        Ok(())
    }
}

/// Prints the summary line of a bulk phase: what it did in how long, at what rate, and how many
/// failed.
fn print_summary(done: &str, took: Duration, rate: f64, unit: &str, failed: usize) {
    println!(
        "{}: {done} in {:.1} s ({rate:.0} {unit}), {failed} failed",
        prog(),
        took.as_secs_f64()
    );
}

/// Closes every session (dropping its command channel ends its task) and waits up to 30 s for
/// the tasks to finish.
pub async fn close_all(sessions: Vec<Session>) {
    println!("{}: closing {} sessions", prog(), sessions.len());
    let tasks: Vec<_> = sessions.into_iter().map(|s| s.task).collect();
    if tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
        .await
        .is_err()
    {
        eprintln!("{}: some session tasks did not finish within 30 s", prog());
    }
}
