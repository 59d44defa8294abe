//! The hub half of registration: `Registration.Join` exchanges a join token and a CSR for a
//! short-lived client certificate. The only RPC served to callers without a certificate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::registration_server::Registration;
use flotilla_proto::v1::{JoinRequest, JoinResponse};
use tonic::{Request, Response, Status};

use crate::api::auth::{JoinLimiter, caller};
use crate::pki::Ca;
use crate::state::error::HubError;
use crate::state::registry::Registry;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct RegistrationService {
    pub registry: Registry,
    pub ca: Arc<Ca>,
    pub limiter: Arc<JoinLimiter>,
    pub metrics: Arc<Metrics>,
    pub cert_lifetime: Duration,
}

impl RegistrationService {
    async fn join(&self, req: &JoinRequest, ip: Option<IpAddr>) -> Result<JoinResponse, HubError> {
        if let Some(ip) = ip
            && let Err(retry) = self.limiter.check(ip)
        {
            return Err(HubError::RateLimited {
                addr: ip.to_string(),
                retry_secs: retry.as_secs().max(1),
            });
        }
        let token = match self.registry.check_token(&req.token).await {
            Ok(t) => t,
            Err(e) => {
                if let Some(ip) = ip {
                    self.limiter.record_failure(ip);
                }
                return Err(e);
            }
        };
        let cluster = token.record.cluster.clone();
        let rec = self.registry.get_cluster(&cluster).await?;
        if rec.revoked {
            return Err(HubError::ClusterRevoked(cluster));
        }
        let identity = Registry::cluster_identity(&cluster);
        // Sign before consuming the token, so a bad CSR does not burn a single-use token.
        let issued = self
            .ca
            .sign_csr(&req.csr_pem, &identity, self.cert_lifetime)?;
        let version = req.agent.as_ref().map(|a| a.version.as_str()).unwrap_or("");
        self.registry
            .complete_join(token, &issued.serial, issued.not_after, version)
            .await?;
        Ok(JoinResponse {
            cluster_id: cluster,
            cert_chain_pem: issued.chain_pem,
            ca_bundle_pem: self.ca.cert_pem().to_string(),
            identity: identity.uri(self.ca.trust_domain()),
        })
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let c = caller(&req);
        let ip = c.addr.map(|a| a.ip());
        let body = req.into_inner();
        match RegistrationService::join(self, &body, ip).await {
            Ok(resp) => {
                self.metrics.count_join("ok");
                tracing::info!(cluster.id = %resp.cluster_id, addr = ?ip, "cluster joined");
                Ok(Response::new(resp))
            }
            Err(e) => {
                self.metrics.count_join(e.metric_label());
                tracing::warn!(addr = ?ip, error = %e, "join refused");
                Err(e.into())
            }
        }
    }
}
