//! The agent's identity kept in one Kubernetes Secret (type Opaque) of its own cluster: keys
//! `agent.yaml`, `identity.pem` (certificate chain, then private key) and `ca.crt`, the same
//! three items a state dir holds. Every save is one merge patch of the Secret, so a renewal swaps
//! certificate and key together; the Secret is created on the first save when it does not exist
//! (an operator may pre-create it empty, so the agent needs only `get` and `patch` on that one
//! name, plus `create` when it is not pre-created).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::{
    AGENT_YAML, AgentState, CA_CRT, Credentials, IDENTITY_PEM, IdentityError, split_identity,
};

/// Field manager and `managed-by` label value on the Secret.
const MANAGER: &str = "flotilla-agent";

/// Identity storage in a Kubernetes Secret.
#[derive(Clone)]
pub struct SecretState {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl fmt::Display for SecretState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for SecretState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretState({self})")
    }
}

fn is_api(e: &kube::Error, pred: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if pred(s))
}

impl SecretState {
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        let namespace = namespace.into();
        Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            name: name.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn kube_err(&self, action: &'static str) -> impl Fn(kube::Error) -> IdentityError + use<> {
        let secret = self.to_string();
        move |source| IdentityError::Kube {
            secret: secret.clone(),
            action,
            source: Box::new(source),
        }
    }

    fn corrupt(&self, key: &'static str, err: impl Into<String>) -> IdentityError {
        IdentityError::SecretCorrupt {
            secret: self.to_string(),
            key,
            err: err.into(),
        }
    }

    /// The text of `key`, or a `SecretCorrupt` error naming it.
    fn text<'a>(
        &self,
        data: &'a BTreeMap<String, ByteString>,
        key: &'static str,
    ) -> Result<&'a str, IdentityError> {
        let bytes = data.get(key).ok_or_else(|| self.corrupt(key, "missing"))?;
        std::str::from_utf8(&bytes.0).map_err(|e| self.corrupt(key, format!("not UTF-8: {e}")))
    }

    /// Loads state and credentials; `Ok(None)` when the Secret does not exist or holds no
    /// `agent.yaml` yet (pre-created empty).
    pub async fn load(&self) -> Result<Option<(AgentState, Credentials)>, IdentityError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.kube_err("read"))?
        else {
            return Ok(None);
        };
        let data = secret.data.unwrap_or_default();
        if !data.contains_key(AGENT_YAML) {
            return Ok(None);
        }
        let state: AgentState = serde_yaml_ng::from_str(self.text(&data, AGENT_YAML)?)
            .map_err(|e| self.corrupt(AGENT_YAML, e.to_string()))?;
        let (chain_pem, key_pem) =
            split_identity(self.text(&data, IDENTITY_PEM)?).ok_or_else(|| {
                self.corrupt(
                    IDENTITY_PEM,
                    "expected certificate and private key PEM blocks",
                )
            })?;
        let ca_pem = self.text(&data, CA_CRT)?;
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.corrupt(CA_CRT, "expected certificate PEM blocks"));
        }
        Ok(Some((
            state,
            Credentials {
                key_pem,
                chain_pem,
                ca_pem: ca_pem.to_string(),
            },
        )))
    }

    /// Persists everything after a join: one merge patch, or one create when the Secret does
    /// not exist yet.
    pub async fn save(&self, state: &AgentState, creds: &Credentials) -> Result<(), IdentityError> {
        let data = BTreeMap::from([
            (AGENT_YAML.to_string(), bytes(state.to_yaml()?)),
            (IDENTITY_PEM.to_string(), bytes(creds.identity_pem())),
            (CA_CRT.to_string(), bytes(creds.ca_pem.clone())),
        ]);
        match self.patch(&data).await {
            Err(e) if is_api(&e, |s| s.is_not_found()) => {}
            other => return other.map_err(self.kube_err("save")),
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data.clone()),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match self.api.create(&pp, &secret).await {
            Ok(_) => {
                tracing::info!(secret = %self, "created the state Secret");
                Ok(())
            }
            // Created by someone else in between: patch it after all.
            Err(e) if is_api(&e, |s| s.is_already_exists() || s.is_conflict()) => {
                self.patch(&data).await.map_err(self.kube_err("save"))
            }
            Err(e) => Err(self.kube_err("create")(e)),
        }
    }

    /// Persists a renewed certificate and key: one merge patch replacing `identity.pem` only.
    pub async fn save_credentials(&self, creds: &Credentials) -> Result<(), IdentityError> {
        let data = BTreeMap::from([(IDENTITY_PEM.to_string(), bytes(creds.identity_pem()))]);
        self.patch(&data)
            .await
            .map_err(self.kube_err("save renewed certificate"))
    }

    async fn patch(&self, data: &BTreeMap<String, ByteString>) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "metadata": { "labels": labels() },
            "data": data,
        });
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        self.api
            .patch(&self.name, &pp, &Patch::Merge(&body))
            .await
            .map(|_| ())
    }
}

fn bytes(s: String) -> ByteString {
    ByteString(s.into_bytes())
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGER.to_string(),
    )])
}

#[cfg(all(test, feature = "simulated"))]
mod tests {
    use super::*;
    use crate::identity::new_key_and_csr;
    use crate::identity::tests::fixture;
    use crate::sim::{SimCluster, SimConfig};

    /// A simulated cluster with the namespace `flotilla`, holding `secrets`.
    async fn fake_with(secrets: &[Secret]) -> kube::Client {
        let client = SimCluster::new(SimConfig {
            namespaces: vec!["flotilla".into()],
            ..SimConfig::default()
        })
        .client();
        for s in secrets {
            Api::<Secret>::namespaced(client.clone(), "flotilla")
                .create(&PostParams::default(), s)
                .await
                .unwrap();
        }
        client
    }

    async fn fake() -> kube::Client {
        fake_with(&[]).await
    }

    /// A cluster whose Secret `flotilla/agent-state` holds the [`fixture`]: its client (to read
    /// the raw Secret), the store, and the state and credentials saved.
    async fn saved() -> (kube::Client, SecretState, AgentState, Credentials) {
        let client = fake().await;
        let s = SecretState::new(client.clone(), "flotilla", "agent-state");
        let (st, creds) = fixture();
        s.save(&st, &creds).await.unwrap();
        (client, s, st, creds)
    }

    /// An empty Secret `flotilla/<name>`.
    fn secret(name: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some("flotilla".into());
        secret
    }

    async fn raw(client: &kube::Client, ns: &str, name: &str) -> Secret {
        Api::<Secret>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn missing_secret_loads_as_not_joined() {
        let s = SecretState::new(fake().await, "flotilla", "agent-state");
        assert!(s.load().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn save_then_load_round_trips_in_one_opaque_secret() {
        let (client, s, st, creds) = saved().await;
        let (st2, c2) = s.load().await.unwrap().unwrap();
        assert_eq!(st2, st);
        assert_eq!(c2.key_pem, creds.key_pem);
        assert_eq!(c2.chain_pem, creds.chain_pem);
        assert_eq!(c2.ca_pem, creds.ca_pem);

        let secret = raw(&client, "flotilla", "agent-state").await;
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, [AGENT_YAML, CA_CRT, IDENTITY_PEM]);
        let id = String::from_utf8(data[IDENTITY_PEM].0.clone()).unwrap();
        assert!(id.contains("PRIVATE KEY") && id.contains("BEGIN CERTIFICATE"));

        // Saving again (a re-join) updates the same Secret.
        let mut st3 = st.clone();
        st3.hub = "h:2".into();
        s.save(&st3, &creds).await.unwrap();
        assert_eq!(s.load().await.unwrap().unwrap().0.hub, "h:2");
    }

    #[tokio::test]
    async fn renewal_replaces_identity_pem_only() {
        let (client, s, _, creds) = saved().await;
        let before = raw(&client, "flotilla", "agent-state").await.data.unwrap();

        let (key2, _) = new_key_and_csr("y").unwrap();
        let renewed = Credentials {
            key_pem: key2.clone(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nCC==\n-----END CERTIFICATE-----\n".into(),
            ca_pem: "ignored by save_credentials".into(),
        };
        s.save_credentials(&renewed).await.unwrap();
        let after = raw(&client, "flotilla", "agent-state").await.data.unwrap();
        assert_eq!(after[AGENT_YAML], before[AGENT_YAML]);
        assert_eq!(after[CA_CRT], before[CA_CRT]);
        assert_ne!(after[IDENTITY_PEM], before[IDENTITY_PEM]);
        let (_, c) = s.load().await.unwrap().unwrap();
        assert_eq!(c.key_pem, key2);
        assert_eq!(c.chain_pem, renewed.chain_pem);
        assert_eq!(c.ca_pem, creds.ca_pem);
    }

    #[tokio::test]
    async fn renewal_without_the_secret_is_an_error_naming_it() {
        let s = SecretState::new(fake().await, "flotilla", "gone");
        let (_, creds) = fixture();
        let err = s.save_credentials(&creds).await.unwrap_err();
        assert!(matches!(err, IdentityError::Kube { .. }), "{err}");
        assert!(err.to_string().contains("Secret flotilla/gone"), "{err}");
    }

    #[tokio::test]
    async fn pre_created_empty_secret_is_not_joined_and_is_filled_in() {
        let client = fake_with(&[secret("agent-state")]).await;
        let s = SecretState::new(client, "flotilla", "agent-state");
        assert!(s.load().await.unwrap().is_none());
        let (st, creds) = fixture();
        s.save(&st, &creds).await.unwrap();
        assert_eq!(s.load().await.unwrap().unwrap().0, st);
    }

    async fn with_data(pairs: &[(&str, &[u8])]) -> SecretState {
        let mut secret = secret("bad");
        secret.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        SecretState::new(fake_with(&[secret]).await, "flotilla", "bad")
    }

    #[tokio::test]
    async fn malformed_secret_data_is_a_clear_corrupt_error() {
        let (st, creds) = fixture();
        let yaml = st.to_yaml().unwrap();
        let id = creds.identity_pem();
        type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str);
        let cases: Vec<Case> = vec![
            (vec![(AGENT_YAML, b": : not yaml [")], AGENT_YAML),
            (vec![(AGENT_YAML, b"\xff\xfe")], AGENT_YAML),
            (vec![(AGENT_YAML, yaml.as_bytes())], IDENTITY_PEM),
            (
                vec![
                    (AGENT_YAML, yaml.as_bytes()),
                    (IDENTITY_PEM, b"no pem here"),
                ],
                IDENTITY_PEM,
            ),
            (
                vec![(AGENT_YAML, yaml.as_bytes()), (IDENTITY_PEM, id.as_bytes())],
                CA_CRT,
            ),
            (
                vec![
                    (AGENT_YAML, yaml.as_bytes()),
                    (IDENTITY_PEM, id.as_bytes()),
                    (CA_CRT, b"garbage"),
                ],
                CA_CRT,
            ),
        ];
        for (pairs, bad_key) in cases {
            let err = with_data(&pairs).await.load().await.unwrap_err();
            match &err {
                IdentityError::SecretCorrupt { secret, key, .. } => {
                    assert_eq!(secret, "flotilla/bad");
                    assert_eq!(*key, bad_key, "{err}");
                }
                other => panic!("expected SecretCorrupt for {bad_key}, got {other}"),
            }
            assert!(
                err.to_string().starts_with(&format!(
                    "state Secret flotilla/bad key {bad_key} is corrupt"
                )),
                "{err}"
            );
        }
    }
}
