//! Cluster backends: a real Kubernetes API server (in-cluster config or a kubeconfig file) or a
//! simulated, in-memory API server (`crate::sim`). Both are reached through the same
//! `kube::Client`, so the rest of the agent never knows which one it drives; the simulated one is
//! labelled as a simulation wherever it shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

pub use crate::sim::SimConfig;

/// How long the start-up probe of a real API server may take before the agent goes on without it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a log line or status says about the simulated backend.
pub const SIMULATED_LABEL: &str = "simulated (in-memory, not a real Kubernetes API)";

/// Which cluster the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterBackend {
    /// An in-memory, simulated cluster (demo, tests, load generation).
    Simulated,
    /// A real Kubernetes API server (in-cluster config or --kubeconfig).
    Kube,
}

impl ClusterBackend {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClusterBackend::Simulated => "simulated",
            ClusterBackend::Kube => "kube",
        }
    }
}

/// Why the agent could not reach its cluster's API.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no in-cluster config and no --kubeconfig: {0}")]
    NoConfig(#[source] Box<InferConfigError>),
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<KubeconfigError>,
    },
    #[error("building the Kubernetes client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("the simulated cluster backend is not compiled into this build (feature `simulated`)")]
    SimulatedNotBuilt,
}

/// Connects to the cluster `backend` names. For `Kube`, `kubeconfig` selects a kubeconfig file;
/// without it the usual inference applies (`KUBECONFIG` or `~/.kube/config`, then the in-cluster
/// service account). For `Simulated`, every call starts a fresh in-memory API server holding
/// only `sim.namespaces`; `sim` is ignored for `Kube`.
pub async fn connect(
    backend: ClusterBackend,
    kubeconfig: Option<&Path>,
    sim: &SimConfig,
) -> Result<kube::Client, ClusterError> {
    match backend {
        ClusterBackend::Simulated => {
            if let Some(path) = kubeconfig {
                tracing::warn!(kubeconfig = %path.display(), "--kubeconfig is ignored with --cluster simulated");
            }
            let client = simulated(sim)?;
            tracing::info!("cluster backend: {SIMULATED_LABEL}");
            Ok(client)
        }
        ClusterBackend::Kube => kube_client(kubeconfig).await,
    }
}

/// The client keeps the cluster alive: its service holds the cluster's state.
#[cfg(feature = "simulated")]
fn simulated(sim: &SimConfig) -> Result<kube::Client, ClusterError> {
    Ok(crate::sim::SimCluster::new(sim.clone()).client())
}

#[cfg(not(feature = "simulated"))]
fn simulated(_: &SimConfig) -> Result<kube::Client, ClusterError> {
    Err(ClusterError::SimulatedNotBuilt)
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClusterError> {
    // rustls may be built with more than one crypto provider (whatever else the embedding
    // program links may enable aws-lc-rs); kube-client takes the process default, so pin ring,
    // which the rest of the agent uses. A provider installed earlier by the embedding program
    // wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let kc_err = |source| ClusterError::Kubeconfig {
                path: path.to_path_buf(),
                source: Box::new(source),
            };
            let kc = Kubeconfig::read_from(path).map_err(kc_err)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(kc_err)?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClusterError::NoConfig(Box::new(e)))?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| ClusterError::Client {
        server: server.clone(),
        source: Box::new(e),
    })?;
    tracing::info!(server = %server, "cluster backend: kube");
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(server = %server, version = %v.git_version, "Kubernetes API server reachable")
        }
        Ok(Err(e)) => {
            tracing::warn!(server = %server, error = %e, "Kubernetes API server not answering yet")
        }
        Err(_) => {
            tracing::warn!(server = %server, timeout = ?PROBE_TIMEOUT, "Kubernetes API server not answering yet")
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_kubeconfig_names_the_file() {
        let err = connect(
            ClusterBackend::Kube,
            Some(Path::new("/nonexistent/flotilla/kubeconfig")),
            &SimConfig::default(),
        )
        .await
        .err()
        .expect("a missing kubeconfig is an error");
        let msg = err.to_string();
        assert!(
            msg.contains("--kubeconfig /nonexistent/flotilla/kubeconfig"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn malformed_kubeconfig_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kc");
        std::fs::write(&p, "clusters: [this is: not: a kubeconfig").unwrap();
        let err = connect(ClusterBackend::Kube, Some(&p), &SimConfig::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::Kubeconfig { .. }), "{err}");
    }

    #[tokio::test]
    async fn kubeconfig_without_server_is_rejected_before_any_dial() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kc");
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {}\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {}\n",
        )
        .unwrap();
        let err = connect(ClusterBackend::Kube, Some(&p), &SimConfig::default())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("cluster url is missing"), "{err}");
    }

    #[tokio::test]
    async fn kubeconfig_client_is_built_and_names_its_server() {
        // A closed local port: the client is built, the probe fails fast and is only a warning.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kc");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u, namespace: ns1}}\nusers:\n- name: u\n  user: {{token: t}}\n"
            ),
        )
        .unwrap();
        let client = connect(ClusterBackend::Kube, Some(&p), &SimConfig::default())
            .await
            .unwrap();
        assert_eq!(client.default_namespace(), "ns1");
    }

    #[cfg(feature = "simulated")]
    #[tokio::test]
    async fn simulated_backend_is_a_fresh_in_memory_api() {
        use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
        let sim = SimConfig::default();
        let a = connect(ClusterBackend::Simulated, None, &sim)
            .await
            .unwrap();
        let b = connect(ClusterBackend::Simulated, None, &sim)
            .await
            .unwrap();
        let api_a: kube::Api<ConfigMap> = kube::Api::namespaced(a, "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("x".into());
        api_a.create(&Default::default(), &cm).await.unwrap();
        assert!(api_a.get_opt("x").await.unwrap().is_some());
        let api_b: kube::Api<ConfigMap> = kube::Api::namespaced(b.clone(), "default");
        assert!(api_b.get_opt("x").await.unwrap().is_none());

        // It starts with the configured namespaces and says it is simulated.
        let namespaces: kube::Api<Namespace> = kube::Api::all(b.clone());
        let names: Vec<String> = namespaces
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let mut want = sim.namespaces.clone();
        want.sort();
        assert_eq!(names, want);
        let version = b.apiserver_version().await.unwrap();
        assert_eq!(version.platform, "simulated");
    }

    #[cfg(not(feature = "simulated"))]
    #[tokio::test]
    async fn simulated_backend_is_not_built() {
        let err = connect(ClusterBackend::Simulated, None, &SimConfig::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::SimulatedNotBuilt), "{err}");
    }
}
