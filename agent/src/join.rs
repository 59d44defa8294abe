//! The agent half of registration: verifies the hub against the CA fingerprint in the join
//! token, then sends a CSR with the token and receives its certificate.

use flotilla_proto::tls::{TlsDialer, bootstrap_client_config, error_chain};
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::registration_client::RegistrationClient;
use flotilla_proto::v1::{AgentInfo, JoinRequest};
use tonic::Code;

use crate::identity::{AgentState, Credentials, new_key_and_csr};

/// Why a join did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The hub (or the CA pin) said no; retrying cannot help.
    #[error("join refused: {0}")]
    Refused(String),
    /// The hub could not be reached or failed; worth retrying.
    #[error("join failed (will retry): {0}")]
    Transient(String),
    /// A key or CSR could not be made here.
    #[error("join refused: {0}")]
    KeyGen(#[from] crate::identity::IdentityError),
}

/// Performs one join attempt: each endpoint (`hubs`, else the token's) in turn until one
/// answers; a refusal is final, a transient failure moves on to the next.
pub async fn join(
    token: &JoinToken,
    hubs: &[String],
    agent: AgentInfo,
) -> Result<(AgentState, Credentials), JoinError> {
    let endpoints = if hubs.is_empty() {
        token.endpoints()
    } else {
        hubs.to_vec()
    };
    let mut last = None;
    for hub in &endpoints {
        match join_at(token, hub, agent.clone()).await {
            Ok((mut state, creds)) => {
                if endpoints.len() > 1 {
                    state.hubs = endpoints.clone();
                }
                return Ok((state, creds));
            }
            Err(JoinError::Transient(m)) => {
                tracing::warn!(error = %m, "join through {hub} failed; trying the next endpoint");
                last = Some(JoinError::Transient(m));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| JoinError::Refused("the join token names no hub".into())))
}

/// One join attempt through `hub`.
async fn join_at(
    token: &JoinToken,
    hub: &str,
    agent: AgentInfo,
) -> Result<(AgentState, Credentials), JoinError> {
    let hub = hub.to_string();
    let cfg = bootstrap_client_config(&token.ca)
        .map_err(|e| JoinError::Refused(format!("bad token CA fingerprint: {e}")))?;
    let channel = TlsDialer::new(cfg).channel(&hub).await.map_err(|e| {
        let msg = error_chain(&e);
        if msg.contains("fingerprint does not match") {
            JoinError::Refused(format!("hub {hub}: {msg}"))
        } else {
            JoinError::Transient(format!("hub {hub} unreachable: {msg}"))
        }
    })?;
    let (key_pem, csr_pem) = new_key_and_csr("flotilla-agent")?;
    let resp = RegistrationClient::new(channel)
        .join(JoinRequest {
            token: token.token.clone(),
            csr_pem,
            agent: Some(agent),
        })
        .await
        .map_err(|s| match s.code() {
            Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted => JoinError::Transient(format!("hub {hub}: {}", s.message())),
            _ => JoinError::Refused(s.message().to_string()),
        })?
        .into_inner();
    let trust_domain = resp
        .identity
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_string();
    Ok((
        AgentState {
            hub,
            hubs: vec![],
            cluster_id: resp.cluster_id,
            identity: resp.identity,
            trust_domain,
        },
        Credentials {
            key_pem,
            chain_pem: resp.cert_chain_pem,
            ca_pem: resp.ca_bundle_pem,
        },
    ))
}
