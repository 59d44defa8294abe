//! The hub under test as several replicas on one etcd, for the benchmarks' HA mode
//! (`--replicas N`): a 3-member etcd of the installed binary ([`crate::etcd::EtcdCluster`], its
//! defaults: `--max-txn-ops 128`, requests up to 1.5 MiB), then N `flotilla-hub serve --store
//! etcd://…/<prefix>` children sharing one operator CA ([`crate::operator_ca`]), each with its
//! own data dir, log, ports and `--replica-name`, and every replica's endpoint (`--endpoint`,
//! in replica order, as a deployment gives them). Besides starting and stopping them: which
//! replica leads (`flotilla_hub_leader`), a `kill -9` of one of them, the replicas' samples and
//! gauges summed over the live ones ([`HubSet`]), the etcd members' own memory and CPU, and
//! what etcd holds under the run's prefix, by key family ([`EtcdBytes`]).
//!
//! Everything stays on loopback; every wait has a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_hub::store::Store;
use flotilla_hub::store::etcd::EtcdStore;
use futures::FutureExt;
use serde::Serialize;

use super::hub::{HubProcess, ProcSample, free_port, metric, metrics, sample_pid, wait_for_gauge};
use super::prog;
use crate::etcd::EtcdCluster;

/// Members of the etcd cluster the replicas share.
pub const ETCD_MEMBERS: usize = 3;
/// How long the replicas may take to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between looks at the replicas' metrics while waiting for a leader.
const POLL: Duration = Duration::from_millis(100);
/// Pause between looks at the replicas' session gauges (as [`wait_for_gauge`]'s).
const GAUGE_POLL: Duration = Duration::from_millis(250);

/// A view of the hubs a benchmark measures: one hub, or the live replicas in replica order.
/// Samples and counters are summed over them.
#[derive(Clone, Copy)]
pub struct HubSet<'a>(pub &'a [&'a HubProcess]);

impl HubSet<'_> {
    /// Each hub's memory, threads and CPU time.
    pub fn samples(&self) -> Result<Vec<ProcSample>> {
        self.0.iter().map(|h| h.sample()).collect()
    }

    /// The hubs' samples summed (for one hub: its sample).
    pub fn sample(&self) -> Result<ProcSample> {
        Ok(sum(&self.samples()?))
    }

    /// The sum over the hubs of the sample `name` (exactly, labels included) of their metrics;
    /// `None` when no hub has it.
    pub async fn metric_sum(&self, name: &str) -> Result<Option<f64>> {
        let mut total: Option<f64> = None;
        for h in self.0 {
            if let Some(v) = metric(&metrics(h).await?, name) {
                *total.get_or_insert(0.0) += v;
            }
        }
        Ok(total)
    }

    /// Each hub's `flotilla_hub_sessions_connected`.
    pub async fn gauges(&self) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.0.len());
        for h in self.0 {
            let v = metric(&metrics(h).await?, "flotilla_hub_sessions_connected").unwrap_or(0.0);
            out.push(v.max(0.0) as usize);
        }
        Ok(out)
    }

    /// Waits until each hub's `flotilla_hub_sessions_connected` equals its entry of `want` (for
    /// one hub: [`wait_for_gauge`]), or `timeout` passes; returns the last values read.
    pub async fn wait_for_gauges(&self, want: &[usize], timeout: Duration) -> Result<Vec<usize>> {
        if let ([hub], [want]) = (self.0, want) {
            return Ok(vec![wait_for_gauge(hub, *want, timeout).await?]);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.gauges().await?;
            if now == want {
                return Ok(now);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{}: the replicas report {now:?} sessions, expected {want:?}",
                    prog()
                );
                return Ok(now);
            }
            tokio::time::sleep(GAUGE_POLL).await;
        }
    }

    /// The hubs' gRPC addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.0.iter().map(|h| h.addr.clone()).collect()
    }
}

/// Samples summed: RSS, peaks, threads and CPU time of several processes together.
pub fn sum(samples: &[ProcSample]) -> ProcSample {
    samples
        .iter()
        .fold(ProcSample::default(), |a, s| ProcSample {
            rss_kib: a.rss_kib + s.rss_kib,
            hwm_kib: a.hwm_kib + s.hwm_kib,
            threads: a.threads + s.threads,
            cpu_secs: a.cpu_secs + s.cpu_secs,
        })
}

/// What etcd holds under one top-level prefix of the hub's keys (`/clusters/`, `/rollouts/`, …).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyFamily {
    pub family: String,
    pub keys: u64,
    /// Key bytes as etcd stores them (the run's prefix included).
    pub key_bytes: u64,
    pub value_bytes: u64,
    /// The largest value of the family, and its key.
    pub largest_value: u64,
    pub largest_key: String,
}

impl KeyFamily {
    pub fn bytes(&self) -> u64 {
        self.key_bytes + self.value_bytes
    }
}

/// Every key under the run's prefix, listed through the hub's own store ([`EtcdStore::list`]),
/// by family; and what the etcd members say of their database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdBytes {
    pub prefix: String,
    /// In family order.
    pub families: Vec<KeyFamily>,
    pub keys: u64,
    /// Key and value bytes of every key.
    pub bytes: u64,
    /// The store revision the list was read at (one per etcd write transaction since the start).
    pub revision: u64,
    /// The etcd members' database file sizes (history not compacted included) and the part of
    /// it in use, from the first member that answers `Status`.
    pub db_size_bytes: Option<u64>,
    pub db_size_in_use_bytes: Option<u64>,
}

/// The top-level family of a hub key: `/clusters/load-00001` → `/clusters/`.
pub fn family_of(key: &str) -> String {
    let rest = key.strip_prefix('/').unwrap_or(key);
    match rest.find('/') {
        Some(i) => format!("/{}", &rest[..=i]),
        None => format!("/{rest}"),
    }
}

/// `kvs` (key, value length) by family.
pub fn by_family<'a>(
    prefix: &str,
    kvs: impl IntoIterator<Item = (&'a str, usize)>,
) -> Vec<KeyFamily> {
    let mut map: BTreeMap<String, KeyFamily> = BTreeMap::new();
    for (key, value_len) in kvs {
        let family = family_of(key);
        let f = map.entry(family.clone()).or_insert_with(|| KeyFamily {
            family,
            ..Default::default()
        });
        f.keys += 1;
        f.key_bytes += (prefix.len() + key.len()) as u64;
        f.value_bytes += value_len as u64;
        if value_len as u64 > f.largest_value || f.largest_key.is_empty() {
            f.largest_value = value_len as u64;
            f.largest_key = key.to_string();
        }
    }
    map.into_values().collect()
}

/// The largest batch any of `texts` (metrics of the replicas) recorded in
/// `flotilla_hub_store_batch_writes`: the smallest bucket bound holding every batch, the
/// largest over the texts; `None` when none recorded a batch.
pub fn largest_batch_bound(texts: &[String]) -> Option<f64> {
    let mut largest: Option<f64> = None;
    for text in texts {
        let count = metric(text, "flotilla_hub_store_batch_writes_count").unwrap_or(0.0);
        if count <= 0.0 {
            continue;
        }
        let bound = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("flotilla_hub_store_batch_writes_bucket{le=\"")?;
                let (le, v) = rest.split_once("\"}")?;
                let v: f64 = v.split_whitespace().next()?.parse().ok()?;
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                (v >= count).then_some(le)
            })
            .reduce(f64::min);
        if let Some(b) = bound {
            largest = Some(largest.map_or(b, |l: f64| l.max(b)));
        }
    }
    largest
}

/// N hub replicas on a 3-member etcd of their own; stopped (or killed) when dropped.
pub struct Replicas {
    /// In replica order (`replica-0`, `replica-1`, …); a killed one stays, marked.
    pub hubs: Vec<HubProcess>,
    pub names: Vec<String>,
    /// Every replica's gRPC `host:port`, in replica order (their `--endpoint` list).
    pub endpoints: Vec<String>,
    /// The key prefix of the run in etcd.
    pub prefix: String,
    pub etcd: EtcdCluster,
    etcd_pids: Vec<u32>,
    killed: Vec<AtomicBool>,
}

/// The pid of the process started with `--listen-client-urls http://127.0.0.1:<port>` (an etcd
/// member of this run), from `/proc`.
fn pid_serving(port: u16) -> Option<u32> {
    let want = format!("http://127.0.0.1:{port}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--listen-client-urls" && w[1] == want.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

impl Replicas {
    /// Starts a [`ETCD_MEMBERS`]-member etcd, then `n` replicas one after another (each ready
    /// before the next starts) with their data and logs under `dir/replica-<i>`, keys under
    /// `/<program>`, and waits until one of them leads. `extra`: more `serve` flags for every
    /// replica.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        n: usize,
        heartbeat_interval: &str,
        extra: &[String],
    ) -> Result<Self> {
        if n < 2 {
            bail!("replicas need at least 2 hubs (got {n})");
        }
        // The members' data and logs go under `dir/etcd` (kept with the run's directory when
        // it fails).
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir)
            .with_context(|| format!("creating {}", etcd_dir.display()))?;
        println!(
            "{}: starting a {ETCD_MEMBERS}-member etcd in {}",
            prog(),
            etcd_dir.display()
        );
        // EtcdCluster panics when etcd cannot start (it is the tests' helper): a task turns
        // that into an error.
        let start = {
            let etcd_dir = etcd_dir.clone();
            async move { EtcdCluster::start_in(&etcd_dir, ETCD_MEMBERS).await }
        };
        let etcd = tokio::spawn(start).await.map_err(|e| {
            let logs: Vec<String> = (0..ETCD_MEMBERS)
                .map(|i| {
                    let log = etcd_dir.join(format!("m{i}.log"));
                    format!("{}:\n{}", log.display(), super::hub::log_tail(&log, 8))
                })
                .collect();
            anyhow!(
                "starting a {ETCD_MEMBERS}-member etcd failed: {e}; its logs:\n{}",
                logs.join("\n")
            )
        })?;
        let etcd_pids: Vec<u32> = etcd
            .members
            .iter()
            .filter_map(|m| pid_serving(m.client_port))
            .collect();
        let prefix = format!("/{}", prog());
        let url = etcd.url(&prefix);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (_, ca_cert, ca_key) = crate::operator_ca(dir);
        let mut ports: Vec<(u16, u16)> = Vec::with_capacity(n);
        let mut taken = Vec::new();
        for _ in 0..n {
            let mut pick = || -> Result<u16> {
                loop {
                    let p = free_port()?;
                    if !taken.contains(&p) {
                        taken.push(p);
                        return Ok(p);
                    }
                }
            };
            ports.push((pick()?, pick()?));
        }
        let endpoints: Vec<String> = ports
            .iter()
            .map(|(grpc, _)| format!("127.0.0.1:{grpc}"))
            .collect();
        let names: Vec<String> = (0..n).map(|i| format!("replica-{i}")).collect();
        let mut hubs = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let mut flags: Vec<String> = vec![
                "--store".into(),
                url.clone(),
                "--ca-cert".into(),
                ca_cert.display().to_string(),
                "--ca-key".into(),
                ca_key.display().to_string(),
                "--replica-name".into(),
                name.clone(),
            ];
            for e in &endpoints {
                flags.push("--endpoint".into());
                flags.push(e.clone());
            }
            flags.extend(extra.iter().cloned());
            let hub_dir = dir.join(name);
            std::fs::create_dir_all(&hub_dir)
                .with_context(|| format!("creating {}", hub_dir.display()))?;
            let hub =
                HubProcess::start_on(bin, &hub_dir, heartbeat_interval, &flags, Some(ports[i]))
                    .await
                    .with_context(|| format!("starting hub {name} on etcd"));
            match hub {
                Ok(h) => hubs.push(h),
                Err(e) => {
                    for h in hubs {
                        h.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        let killed = (0..n).map(|_| AtomicBool::new(false)).collect();
        let replicas = Self {
            hubs,
            names,
            endpoints,
            prefix,
            etcd,
            etcd_pids,
            killed,
        };
        let leader = replicas.wait_for_leader(LEADER_TIMEOUT).await?;
        println!(
            "{}: {n} hub replicas on etcd {} ({} leads)",
            prog(),
            url,
            replicas.names[leader]
        );
        Ok(replicas)
    }

    /// Says where each replica serves and keeps its data and log.
    pub fn announce(&self) {
        for (name, h) in self.names.iter().zip(&self.hubs) {
            println!(
                "{}: {name}: pid {} serving {} (HTTP {}), data and log in {}",
                prog(),
                h.pid,
                h.addr,
                h.http,
                h.dir.display()
            );
        }
    }

    /// Whether replica `i` was killed.
    pub fn is_killed(&self, i: usize) -> bool {
        self.killed[i].load(Ordering::SeqCst)
    }

    /// The indices of the replicas not killed.
    pub fn live_indices(&self) -> Vec<usize> {
        (0..self.hubs.len())
            .filter(|i| !self.is_killed(*i))
            .collect()
    }

    /// The replicas not killed, in replica order.
    pub fn live(&self) -> Vec<&HubProcess> {
        self.live_indices()
            .into_iter()
            .map(|i| &self.hubs[i])
            .collect()
    }

    /// Each live replica's `flotilla_hub_leader` (`None`: no answer), by replica index.
    pub async fn leaders(&self) -> Vec<(usize, Option<bool>)> {
        let mut out = Vec::new();
        for i in self.live_indices() {
            let lead = match metrics(&self.hubs[i]).await {
                Ok(text) => metric(&text, "flotilla_hub_leader").map(|v| v == 1.0),
                Err(_) => None,
            };
            out.push((i, lead));
        }
        out
    }

    /// Waits until exactly one live replica says it leads; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let leads: Vec<usize> = self
                .leaders()
                .await
                .into_iter()
                .filter(|(_, l)| *l == Some(true))
                .map(|(i, _)| i)
                .collect();
            if let [one] = leads[..] {
                return Ok(one);
            }
            if Instant::now() > deadline {
                bail!(
                    "no single leading replica within {timeout:?} (leading: {leads:?}); logs:\n{}",
                    self.log_tails(10)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `kill -9` of replica `i` (its sessions, lease and registration left as a crash leaves
    /// them); from then on it is not a live replica, and its exit is not an error.
    pub fn kill9(&self, i: usize) -> Result<()> {
        self.killed[i].store(true, Ordering::SeqCst);
        let st = self.hubs[i].kill9()?;
        println!("{}: killed {} with SIGKILL ({st})", prog(), self.names[i]);
        Ok(())
    }

    /// Resolves when a replica not killed on purpose exits, with how it ended and its log.
    async fn died_unexpectedly(&self) -> String {
        let mut pending: Vec<_> = self
            .hubs
            .iter()
            .enumerate()
            .map(|(i, h)| async move { (i, h.died().await) }.boxed())
            .collect();
        while !pending.is_empty() {
            let ((i, why), _, rest) = futures::future::select_all(pending).await;
            if !self.is_killed(i) {
                return self.exited_note(i, &why);
            }
            pending = rest;
        }
        futures::future::pending().await
    }

    fn exited_note(&self, i: usize, why: &str) -> String {
        format!(
            "hub {} exited unexpectedly ({why}); last lines of {}:\n{}",
            self.names[i],
            self.hubs[i].log_path.display(),
            self.hubs[i].log_tail(15)
        )
    }

    /// Runs `work` unless a replica exits first (other than one killed on purpose): then the
    /// error says which and how, with the end of its log. When `work` failed first and a
    /// replica has exited meanwhile (the likely cause), its error says so too.
    pub async fn supervise<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let outcome = tokio::select! {
            r = work => r,
            why = self.died_unexpectedly() => Err(anyhow!(why)),
        };
        match outcome {
            Err(e) if !format!("{e}").contains("exited unexpectedly") => {
                let gone: Vec<String> = (0..self.hubs.len())
                    .filter(|i| !self.is_killed(*i))
                    .filter_map(|i| {
                        self.hubs[i]
                            .exit_status()
                            .map(|why| self.exited_note(i, &why))
                    })
                    .collect();
                if gone.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(gone.join("\n")))
                }
            }
            o => o,
        }
    }

    /// The last `n` lines of every replica's log, each under its name.
    pub fn log_tails(&self, n: usize) -> String {
        self.names
            .iter()
            .zip(&self.hubs)
            .map(|(name, h)| format!("{name} ({}):\n{}", h.log_path.display(), h.log_tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The etcd members' memory and CPU (those found running), summed.
    pub fn etcd_sample(&self) -> ProcSample {
        let samples: Vec<ProcSample> = self
            .etcd_pids
            .iter()
            .filter_map(|pid| sample_pid(*pid, "etcd member").ok())
            .collect();
        sum(&samples)
    }

    /// How many etcd member processes were found (their samples are [`Self::etcd_sample`]).
    pub fn etcd_processes(&self) -> usize {
        self.etcd_pids.len()
    }

    /// The metrics text of every live replica.
    pub async fn metrics_texts(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for h in self.live() {
            out.push(metrics(h).await?);
        }
        Ok(out)
    }

    /// Every key under the run's prefix, listed through [`EtcdStore::list`], summed by family,
    /// and the members' database size.
    pub async fn etcd_bytes(&self) -> Result<EtcdBytes> {
        let store = EtcdStore::connect(&self.etcd.config(&self.prefix))
            .await
            .map_err(|e| anyhow!("connecting to etcd to list the run's keys: {e}"))?;
        let (kvs, revision) = store
            .list("")
            .await
            .map_err(|e| anyhow!("listing the keys under {}: {e}", self.prefix))?;
        let families = by_family(
            &self.prefix,
            kvs.iter().map(|kv| (kv.key.as_str(), kv.value.len())),
        );
        let (db_size, in_use) = self.db_size().await;
        Ok(EtcdBytes {
            prefix: self.prefix.clone(),
            keys: families.iter().map(|f| f.keys).sum(),
            bytes: families.iter().map(KeyFamily::bytes).sum(),
            families,
            revision,
            db_size_bytes: db_size,
            db_size_in_use_bytes: in_use,
        })
    }

    /// The database size and the part in use, from the first member answering `Status`.
    pub async fn db_size(&self) -> (Option<u64>, Option<u64>) {
        for m in &self.etcd.members {
            let ask = async {
                let mut c =
                    etcd_client::Client::connect([format!("http://{}", m.endpoint())], None)
                        .await
                        .ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(st)) = tokio::time::timeout(Duration::from_secs(5), ask).await {
                return (
                    u64::try_from(st.db_size()).ok(),
                    u64::try_from(st.raft_used_db_size()).ok(),
                );
            }
        }
        (None, None)
    }

    /// Stops every replica not killed (SIGTERM, one after another, each up to 30 s; the
    /// leader last so that the lead is handed over only once), then etcd.
    pub async fn shutdown(mut self) {
        let leader = self
            .leaders()
            .await
            .into_iter()
            .find(|(_, l)| *l == Some(true))
            .map(|(i, _)| i);
        let mut hubs: Vec<(usize, HubProcess)> = std::mem::take(&mut self.hubs)
            .into_iter()
            .enumerate()
            .collect();
        hubs.sort_by_key(|(i, _)| Some(*i) == leader);
        for (i, h) in hubs {
            if self.killed[i].load(Ordering::SeqCst) {
                let _ = h.stop(Duration::ZERO).await;
                continue;
            }
            println!("{}: stopping {} (SIGTERM)", prog(), self.names[i]);
            match h.stop(Duration::from_secs(30)).await {
                Ok(st) if st.success() => println!("{}: {} exited cleanly", prog(), self.names[i]),
                Ok(st) => eprintln!("{}: {} exited with {st}", prog(), self.names[i]),
                Err(e) => eprintln!("{}: stopping {}: {e:#}", prog(), self.names[i]),
            }
        }
    }
}

impl Drop for Replicas {
    /// Replicas not stopped (the run failed before [`Replicas::shutdown`]) are killed before
    /// their etcd goes.
    fn drop(&mut self) {
        for h in &self.hubs {
            if h.exit_status().is_none() {
                let _ = h.kill9();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_to_their_family() {
        assert_eq!(family_of("/clusters/load-00001"), "/clusters/");
        assert_eq!(family_of("/status-log/replica-0/17"), "/status-log/");
        assert_eq!(family_of("/meta/last-cluster-id"), "/meta/");
        assert_eq!(family_of("/ready"), "/ready");
        let f = by_family(
            "/p",
            [
                ("/clusters/a", 10),
                ("/clusters/bb", 30),
                ("/rollouts/x", 5),
            ],
        );
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].family, "/clusters/");
        assert_eq!(f[0].keys, 2);
        assert_eq!(f[0].key_bytes, (2 + 11) + (2 + 12));
        assert_eq!(f[0].value_bytes, 40);
        assert_eq!(
            (f[0].largest_value, f[0].largest_key.as_str()),
            (30, "/clusters/bb")
        );
        assert_eq!(f[1].bytes(), 2 + 11 + 5);
    }

    #[test]
    fn the_largest_batch_is_the_smallest_bucket_holding_every_batch() {
        let a = "flotilla_hub_store_batch_writes_sum 40\nflotilla_hub_store_batch_writes_count 3\n\
                 flotilla_hub_store_batch_writes_bucket{le=\"1.0\"} 1\n\
                 flotilla_hub_store_batch_writes_bucket{le=\"2.0\"} 1\n\
                 flotilla_hub_store_batch_writes_bucket{le=\"32.0\"} 3\n\
                 flotilla_hub_store_batch_writes_bucket{le=\"64.0\"} 3\n\
                 flotilla_hub_store_batch_writes_bucket{le=\"+Inf\"} 3\n";
        let b = "flotilla_hub_store_batch_writes_count 0\n";
        assert_eq!(largest_batch_bound(&[a.into(), b.into()]), Some(32.0));
        assert_eq!(largest_batch_bound(&[b.into()]), None);
    }
}
