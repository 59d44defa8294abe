//! Real etcd for the tests: [`EtcdCluster::start`] runs one or more members of the installed
//! `etcd` binary (Debian's `etcd-server`; `.ci/run` installs it) on free loopback ports in a
//! scratch directory, waits until the cluster has a leader, and stops every member when dropped.
//! Members can be killed (`SIGKILL`) and started again on the same ports and data.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use flotilla_hub::store::etcd::{EtcdConfig, EtcdStore};

use crate::eventually;

/// The etcd binary: `$FLOTILLA_ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_ETCD_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "these tests need a real etcd: `etcd` is not on the PATH \
             (Debian: apt-get install etcd-server; .ci/run installs it)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One member: its name, ports, data dir and process (if running).
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// `127.0.0.1:PORT` of the member's client API.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

/// An etcd cluster of real members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// With TLS: the members serve their client API over TLS and ask clients for a certificate.
    pub pki: Option<EtcdPki>,
    _dir: Option<tempfile::TempDir>,
}

/// PEM files of a PKI made for a test etcd: a CA, the members' serving certificate (for
/// `127.0.0.1` and `localhost`) and a client certificate, all signed by that CA.
#[derive(Debug, Clone)]
pub struct EtcdPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdPki {
    /// Makes the PKI under `dir`.
    pub fn create(dir: &Path) -> Self {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as Eku, Issuer, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test etcd CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, sans: Vec<String>, eku: Vec<Eku>| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = eku;
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![Eku::ServerAuth, Eku::ClientAuth],
        );
        let (client_cert, client_key) = leaf("flotilla-hub", vec![], vec![Eku::ClientAuth]);
        let pki = Self {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        for (path, pem) in [
            (&pki.ca, ca_cert.pem()),
            (&pki.server_cert, server_cert),
            (&pki.server_key, server_key),
            (&pki.client_cert, client_cert),
            (&pki.client_key, client_key),
        ] {
            std::fs::write(path, pem).unwrap();
        }
        pki
    }
}

impl EtcdCluster {
    /// Starts `n` members in a scratch directory of their own and waits for a leader.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("a scratch dir for etcd");
        let mut c = Self::start_in(dir.path(), n).await;
        c._dir = Some(dir);
        c
    }

    /// Starts `n` members serving TLS (see [`EtcdPki`]) and requiring client certificates.
    pub async fn start_tls(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("a scratch dir for etcd");
        let pki = EtcdPki::create(&dir.path().join("pki"));
        let mut c = Self::start_with(dir.path(), n, Some(pki)).await;
        c._dir = Some(dir);
        c
    }

    /// Starts `n` members with their data under `dir` and waits for a leader.
    pub async fn start_in(dir: &Path, n: usize) -> Self {
        Self::start_with(dir, n, None).await
    }

    async fn start_with(dir: &Path, n: usize, pki: Option<EtcdPki>) -> Self {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                dir: dir.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            pki,
            _dir: None,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster.clone();
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        let mut tls: Vec<std::ffi::OsString> = Vec::new();
        if let Some(p) = &self.pki {
            for (flag, path) in [
                ("--cert-file", &p.server_cert),
                ("--key-file", &p.server_key),
                ("--trusted-ca-file", &p.ca),
            ] {
                tls.push(flag.into());
                tls.push(path.into());
            }
            tls.push("--client-cert-auth".into());
        }
        let m = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(m.dir.with_extension("log")).expect("etcd log file");
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "flotilla-test"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            // Quicker elections than the defaults (100 ms / 1 s), still well above loopback
            // latency: a lost leader is replaced within about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd ({}): {e}", etcd_bin().display()));
        m.child = Some(child);
    }

    /// `etcd://` URL of the running members (all of them, running or not), with `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let endpoints: Vec<String> = self.members.iter().map(Member::endpoint).collect();
        format!("etcd://{}{prefix}", endpoints.join(","))
    }

    /// The store configuration for this cluster, keys under `prefix`.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        let mut cfg = EtcdConfig::parse(&self.url(prefix)).expect("a valid etcd URL");
        if let Some(p) = &self.pki {
            let read = |path: &PathBuf| std::fs::read_to_string(path).unwrap();
            cfg.tls = Some(flotilla_hub::store::etcd::EtcdTls {
                ca_pem: read(&p.ca),
                identity: Some((read(&p.client_cert), read(&p.client_key))),
            });
        }
        cfg
    }

    /// A store on this cluster, keys under `prefix`.
    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.config(prefix))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test etcd: {e}"))
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data (after [`Self::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// The index of the member that is the leader now, asked of the running members.
    pub async fn leader(&self) -> usize {
        eventually("the etcd cluster to have a leader", || async move {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                let Ok(Ok(mut c)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    Client::connect([format!("http://{}", m.endpoint())], None),
                )
                .await
                else {
                    continue;
                };
                let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
                else {
                    continue;
                };
                if status.leader() == 0 {
                    continue;
                }
                if status.leader() == status.header().map_or(0, |h| h.member_id()) {
                    return self.members.iter().position(|x| x.name == m.name);
                }
            }
            None
        })
        .await
    }

    /// Waits until every running member answers and there is a leader.
    pub async fn wait_healthy(&self) {
        if self.pki.is_some() {
            // Through the hub's own TLS client: a write needs a leader.
            eventually("the TLS etcd to take a write", || async {
                let store = EtcdStore::connect(&self.config("")).await.ok()?;
                flotilla_hub::store::Store::put(&store, "/ready", vec![1])
                    .await
                    .ok()
                    .map(drop)
            })
            .await;
            return;
        }
        self.leader().await;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let ep = format!("http://{}", m.endpoint());
            eventually(&format!("etcd member {} to answer", m.name), || {
                let ep = ep.clone();
                async move {
                    let mut c = Client::connect([ep], None).await.ok()?;
                    c.get("/", None).await.ok().map(drop)
                }
            })
            .await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
