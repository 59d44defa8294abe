//! The two bulk phases every session benchmark starts with: enroll N clusters (AddCluster +
//! Join with a fresh key and CSR each) and open N sessions (one full mutual-TLS handshake each),
//! both with bounded concurrency and progress lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
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

/// The result of [`enroll`].
pub struct Enrollment {
    pub enrolled: Vec<Enrolled>,
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    pub took: Duration,
}

/// Enrolls clusters `cluster_name(0..n)`: `conc` AddCluster + Join in flight at once, the joins
/// over a few shared bootstrap channels (HTTP/2 multiplexes them), one per source address.
pub async fn enroll(
    admin: &AdminClient<Channel>,
    n: usize,
    sources: usize,
    conc: usize,
) -> Result<Enrollment> {
    let started = Instant::now();
    let first_token = add_cluster(&mut admin.clone(), &cluster_name(0)).await?;
    let mut boot = Vec::new();
    for j in 0..sources.min(8) {
        let ch = TlsDialer::new(bootstrap_client_config(&first_token.ca)?)
            .with_local_ip(Some(source_ip(j, sources)))
            .channel(&first_token.hub)
            .await
            .map_err(|e| {
                anyhow!(
                    "bootstrap connection to {}: {}",
                    first_token.hub,
                    error_chain(&e)
                )
            })?;
        boot.push(ch);
    }
    let mut enrolled: Vec<Enrolled> = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut errors: Vec<String> = Vec::new();
    {
        let boot = &boot;
        let first_token = &first_token;
        let mut s = futures::stream::iter(0..n)
            .map(|i| async move {
                let name = cluster_name(i);
                let token = if i == 0 {
                    first_token.clone()
                } else {
                    add_cluster(&mut admin.clone(), &name).await?
                };
                join(boot[i % boot.len()].clone(), &name, &token).await
            })
            .buffer_unordered(conc);
        let mut last = Instant::now();
        while let Some(r) = s.next().await {
            match r {
                Ok(e) => enrolled.push(e),
                Err(e) => {
                    failed += 1;
                    if errors.len() < ERROR_EXAMPLES {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let done = enrolled.len() + failed;
                println!(
                    "{}:   enrolled {done}/{n} ({:.0}/s)",
                    prog(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(Enrollment {
        enrolled,
        failed,
        errors,
        took: started.elapsed(),
    })
}

/// The result of [`open_all`].
pub struct Opened {
    pub sessions: Vec<Session>,
    /// Dial to Welcome, per opened session.
    pub latencies: Vec<Duration>,
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    pub took: Duration,
}

/// Opens a session for every enrolled cluster, `conc` handshakes in flight at once, spread
/// over `sources` loopback source addresses.
pub async fn open_all(
    enrolled: &[Enrolled],
    hub_addr: &str,
    sources: usize,
    conc: usize,
    fleet: &Arc<Fleet>,
    on_desired: Option<DesiredHandler>,
) -> Opened {
    let started = Instant::now();
    let mut sessions: Vec<Session> = Vec::with_capacity(enrolled.len());
    let mut latencies = Vec::with_capacity(enrolled.len());
    let mut failed = 0usize;
    let mut errors: Vec<String> = Vec::new();
    {
        let on_desired = &on_desired;
        let mut s = futures::stream::iter(enrolled.iter().enumerate())
            .map(|(i, who)| {
                open_session(
                    who,
                    hub_addr,
                    source_ip(i, sources),
                    fleet.clone(),
                    on_desired.clone(),
                )
            })
            .buffer_unordered(conc);
        let mut last = Instant::now();
        while let Some(r) = s.next().await {
            match r {
                Ok((sess, took)) => {
                    sessions.push(sess);
                    latencies.push(took);
                }
                Err(e) => {
                    failed += 1;
                    if errors.len() < ERROR_EXAMPLES {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                println!(
                    "{}:   opened {}/{} ({:.0}/s), {failed} failed",
                    prog(),
                    sessions.len(),
                    enrolled.len(),
                    sessions.len() as f64 / started.elapsed().as_secs_f64(),
                );
            }
        }
    }
    Opened {
        sessions,
        latencies,
        failed,
        errors,
        took: started.elapsed(),
    }
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
