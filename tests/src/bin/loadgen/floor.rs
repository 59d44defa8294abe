//! `--floor`: after the hub is stopped, the same clusters hold the same number of connections
//! against a bare tokio-rustls + h2 server in a child process, with the same certificates and
//! key type (a serving certificate from the hub's CA, each cluster's own client certificate),
//! and the same reconnect storm. What the hub costs beyond that is what it adds per session.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use flotilla_hub::pki::Ca;
use flotilla_proto::clock::SystemClock;
use flotilla_proto::tls::mtls_client_config;
use flotilla_tests::bench::client::Enrolled;
use flotilla_tests::bench::fleet::too_many_failures;
use flotilla_tests::bench::floor::{FloorProcess, open_all};
use flotilla_tests::bench::stats::Latency;

use crate::report::{Floor, Report};
use crate::{Args, SETTLE};

/// The trust domain loadgen's hub runs with (its default).
const TRUST_DOMAIN: &str = "flotilla.local";

/// Runs the floor server from `dir` with a certificate from the CA in the hub's `data_dir`, opens
/// a connection for every enrolled cluster, holds them, drops them all and reopens them.
pub async fn phases(
    args: &Args,
    dir: &Path,
    data_dir: &Path,
    enrolled: &[Enrolled],
    rep: &mut Report,
) -> Result<()> {
    let n = enrolled.len();
    let sources = args.sources as usize;
    let conc = args.concurrency as usize;
    let ca = Ca::load_or_create(data_dir, TRUST_DOMAIN, None, Arc::new(SystemClock))?;
    let names = ["127.0.0.1".to_string(), "localhost".to_string()];
    let (cert, key) = ca.issue_server(&names, Duration::from_secs(24 * 3600))?;
    // Fresh client configurations: the hub's tickets (same server name) are not offered.
    let configs = enrolled
        .iter()
        .map(|e| {
            Ok(Arc::new(mtls_client_config(
                &e.ca_pem,
                &e.chain_pem,
                &e.key_pem,
            )?))
        })
        .collect::<Result<Vec<_>>>()?;
    let exe = std::env::current_exe()?;
    let server = FloorProcess::start(&exe, dir, ca.cert_pem(), &cert.chain_pem, &key).await?;
    let outcome = measure(&server, &configs, sources, conc, rep).await;
    server.stop().await;
    outcome?;
    if too_many_failures(rep.floor.as_ref().map_or(n, |f| f.failed), n) {
        bail!("more than 1% of the floor connections failed");
    }
    Ok(())
}

async fn measure(
    server: &FloorProcess,
    configs: &[Arc<rustls::ClientConfig>],
    sources: usize,
    conc: usize,
    rep: &mut Report,
) -> Result<()> {
    let baseline = server.sample()?;
    println!(
        "loadgen: floor: opening {} connections (concurrency {conc})",
        configs.len()
    );
    let cpu_before = server.sample()?.cpu_secs;
    let mut opened = open_all(configs, server.addr, sources, conc).await;
    let cpu_after = server.sample()?.cpu_secs;
    for e in &opened.errors {
        eprintln!("loadgen:   floor open error: {e}");
    }
    tokio::time::sleep(SETTLE).await;
    let held = server.sample()?;
    let count = opened.conns.len();
    let per = |cpu: f64| cpu * 1000.0 / count.max(1) as f64;
    let mut floor = Floor {
        connections: count,
        failed: opened.failed,
        handshakes_per_sec: count as f64 / opened.took.as_secs_f64(),
        open_latency: Latency::of(&mut opened.latencies),
        cpu_ms_per_handshake: per(cpu_after - cpu_before),
        baseline,
        held,
        rss_per_connection_kib: held.rss_kib.saturating_sub(baseline.rss_kib) as f64
            / count.max(1) as f64,
        ..Default::default()
    };
    println!(
        "loadgen: floor holds {count} connections; RSS {:.1} MiB ({:.1} KiB per connection)",
        held.rss_kib as f64 / 1024.0,
        floor.rss_per_connection_kib
    );

    // The storm: drop every connection, let the server see them go, reconnect every one.
    drop(opened.conns);
    tokio::time::sleep(SETTLE).await;
    let cpu_before = server.sample()?.cpu_secs;
    let mut again = open_all(configs, server.addr, sources, conc).await;
    let cpu_after = server.sample()?.cpu_secs;
    tokio::time::sleep(SETTLE).await;
    floor.after_storm = server.sample()?;
    floor.storm_reopened = again.conns.len();
    floor.storm_failed = again.failed;
    floor.storm_resumed = again.resumed;
    floor.storm_reopen_secs = again.took.as_secs_f64();
    floor.storm_open_latency = Latency::of(&mut again.latencies);
    floor.cpu_ms_per_resumed_handshake =
        (cpu_after - cpu_before) * 1000.0 / again.conns.len().max(1) as f64;
    rep.floor = Some(floor);
    Ok(())
}
