//! The `Admin` gRPC API used by the `flotilla` CLI. Every call needs an admin certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::admin_server::Admin;
use flotilla_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::ca::Ca;
use crate::registry::{ClusterRecord, Registry, TokenRecord};
use crate::session::Sessions;

/// The default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct AdminService {
    pub registry: Registry,
    pub sessions: Arc<Sessions>,
    pub ca: Arc<Ca>,
    pub clock: SharedClock,
    /// `host:port` written into join tokens.
    pub hub_address: String,
}

impl AdminService {
    fn authorize<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let c = caller(req, self.ca.trust_domain())?;
        c.admin().map(str::to_string)
    }

    fn cluster_view(&self, rec: &ClusterRecord) -> Cluster {
        let live = self.sessions.get(&rec.name);
        let state = if rec.revoked {
            "revoked"
        } else if live.is_some() {
            "connected"
        } else if rec.last_seen_ms > 0 || !rec.certs.is_empty() {
            "disconnected"
        } else {
            "pending"
        };
        let last_seen = live
            .as_ref()
            .map(|s| s.last_seen_ms())
            .unwrap_or(0)
            .max(rec.last_seen_ms);
        let agent_version = live
            .as_ref()
            .map(|s| s.agent_version.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| rec.agent_version.clone());
        Cluster {
            name: rec.name.clone(),
            labels: rec.labels.clone().into_iter().collect(),
            state: state.into(),
            last_seen_unix_ms: last_seen,
            agent_version,
            cert_expires_unix_ms: rec.cert_expires_ms(),
            created_unix_ms: rec.created_ms,
            identity: Registry::cluster_identity(&rec.name).uri(self.ca.trust_domain()),
        }
    }

    fn token_view(&self, t: &TokenRecord) -> Token {
        Token {
            id: t.id.clone(),
            cluster: t.cluster.clone(),
            expires_unix_ms: t.expires_ms,
            reusable: t.reusable,
            uses: t.uses,
            state: t.state(unix_ms(self.clock.now())).into(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_cluster(
        &self,
        req: Request<AddClusterRequest>,
    ) -> Result<Response<AddClusterResponse>, Status> {
        let admin = self.authorize(&req)?;
        let r = req.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(r.ttl_seconds)
        };
        let labels: BTreeMap<_, _> = r.labels.into_iter().collect();
        let (rec, token, secret) = self
            .registry
            .add_cluster(&r.name, labels, ttl, r.reusable)
            .await?;
        tracing::info!(%admin, cluster.id = %rec.name, token = %token.id, "cluster added");
        let line = JoinToken {
            hub: self.hub_address.clone(),
            ca: self.ca.fingerprint(),
            token: secret,
        }
        .encode();
        Ok(Response::new(AddClusterResponse {
            cluster: Some(self.cluster_view(&rec)),
            token: line,
            token_info: Some(self.token_view(&token)),
        }))
    }

    async fn list_clusters(
        &self,
        req: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        self.authorize(&req)?;
        let clusters = self.registry.list_clusters().await?;
        Ok(Response::new(ListClustersResponse {
            clusters: clusters.iter().map(|c| self.cluster_view(c)).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        self.authorize(&req)?;
        let rec = self.registry.get_cluster(&req.get_ref().name).await?;
        Ok(Response::new(self.cluster_view(&rec)))
    }

    async fn label_cluster(
        &self,
        req: Request<LabelClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let admin = self.authorize(&req)?;
        let r = req.into_inner();
        let set: BTreeMap<_, _> = r.set.into_iter().collect();
        let rec = self
            .registry
            .label_cluster(&r.name, &set, &r.remove)
            .await?;
        tracing::info!(%admin, cluster.id = %rec.name, "cluster labels changed");
        Ok(Response::new(self.cluster_view(&rec)))
    }

    async fn remove_cluster(
        &self,
        req: Request<RemoveClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let admin = self.authorize(&req)?;
        let name = req.into_inner().name;
        let rec = self.registry.remove_cluster(&name).await?;
        let was_live = self.sessions.disconnect(
            &name,
            "revoked",
            &format!("cluster {name:?} was removed by admin/{admin}"),
        );
        tracing::info!(%admin, cluster.id = %name, was_live, "cluster removed and revoked");
        Ok(Response::new(self.cluster_view(&rec)))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.authorize(&req)?;
        let tokens = self.registry.list_tokens().await?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(|t| self.token_view(t)).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let admin = self.authorize(&req)?;
        let t = self.registry.revoke_token(&req.get_ref().id).await?;
        tracing::info!(%admin, token = %t.id, "token revoked");
        Ok(Response::new(self.token_view(&t)))
    }
}
