//! The `Admin` gRPC API used by the `flotilla` CLI. Every call needs an admin certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::identity::Identity;
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::admin_server::Admin;
use flotilla_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::api::auth::caller;
use crate::api::rollout_view::{audit_view, rollout_view};
use crate::engine::rollout::plan::AppRollout;
use crate::engine::sources::{SourceRecord, Sources};
use crate::pki::Ca;
use crate::state::desired::DesiredStates;
use crate::state::registry::{ClusterRecord, Registry, TokenRecord};
use crate::state::sessions::Sessions;
use crate::store::election::{self, ReplicaInfo, Role};

/// The default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How many audit entries `ListAudit` returns when the request says 0.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub registry: Registry,
    pub sessions: Arc<Sessions>,
    pub ca: Arc<Ca>,
    pub clock: SharedClock,
    /// `host:port` written into join tokens.
    pub hub_address: String,
    /// Every endpoint of the hub's replicas, for join tokens (`--endpoint`); empty: this
    /// hub's own address only.
    pub endpoints: Vec<String>,
    pub sources: Sources,
    pub desired: DesiredStates,
    pub rollouts: crate::engine::rollout::Rollouts,
    pub replicas: HubReplicas,
}

/// What `GetHubStatus` reads: this replica, its part in the election, and the etcd store the
/// replicas share.
#[derive(Debug, Clone)]
pub struct HubReplicas {
    pub me: ReplicaInfo,
    pub role: tokio::sync::watch::Receiver<Role>,
    /// `None`: redb, one hub (always the leader).
    pub etcd: Option<crate::store::etcd::EtcdStore>,
}

/// Why `app`'s newest commit is not taken, per source that lists it: the app's own error (a
/// rendering that failed, an app another source defines) and its source's (a configuration
/// it cannot load, a failed fetch), each prefixed by the source.
fn app_errors(sources: &[SourceRecord], app: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for s in sources {
        let Some(st) = s.status.apps.get(app) else {
            continue;
        };
        for e in [&s.status.error, &st.error].into_iter().flatten() {
            errors.push(format!("source {}: {e}", s.name));
        }
    }
    errors
}

impl AdminService {
    fn authorize<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let c = caller(req);
        c.admin().map(str::to_string)
    }

    /// Like [`Self::authorize`], but returns the admin's full identity
    /// (`spiffe://<trust domain>/admin/<name>`), as audit entries record it.
    fn authorize_uri<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let name = self.authorize(req)?;
        Ok(Identity::Admin(name).uri(self.ca.trust_domain()))
    }

    fn rollout_out(&self, rec: &AppRollout) -> Rollout {
        let names = |c| self.rollouts.name_of(c);
        rollout_view(rec, unix_ms(self.clock.now()), &names)
    }

    fn cluster_view(&self, rec: &ClusterRecord) -> Cluster {
        let live = self.sessions.get(&rec.name);
        // With several replicas: connected through another one, as its record says.
        let elsewhere = match live {
            Some(_) => None,
            None => self.registry.connected_elsewhere(&rec.name),
        };
        let state = rec.state(live.is_some() || elsewhere.is_some());
        let hub_replica = match (&live, elsewhere) {
            (Some(_), _) if self.replicas.etcd.is_some() => self.replicas.me.name.clone(),
            (_, Some(other)) => other,
            _ => String::new(),
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
            apps: Vec::new(),
            cluster_backend: live
                .as_ref()
                .map(|s| s.cluster_backend.clone())
                .unwrap_or_default(),
            hub_replica,
        }
    }

    /// Per app of a cluster: desired revision and the agent's last report, by app name.
    async fn cluster_apps(&self, cluster: &str) -> Result<Vec<ClusterApp>, Status> {
        let desired = self.rollouts.desired_of(cluster).await?;
        let status = self.desired.status(cluster).await?;
        let mut names: Vec<&str> = desired.apps.iter().map(|a| a.app.as_str()).collect();
        names.extend(status.apps.iter().map(|a| &*a.app));
        names.sort_unstable();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|name| {
                let want = desired.apps.iter().find(|a| a.app == name);
                let report = status.apps.iter().find(|a| *a.app == *name);
                ClusterApp {
                    name: name.to_string(),
                    desired_revision: want.map(|a| a.revision.clone()).unwrap_or_default(),
                    revision: report.map(|r| r.revision.to_string()).unwrap_or_default(),
                    bundle_digest: report
                        .map(|r| r.bundle_digest.to_string())
                        .unwrap_or_default(),
                    phase: report.map(|r| r.phase).unwrap_or_default().into(),
                    health: report.map(|r| r.health).unwrap_or_default().into(),
                    objects: report.map(|r| r.counts_wire()),
                    drifted: report.map(|r| r.drifted).unwrap_or_default(),
                    healed: report.map(|r| r.healed).unwrap_or_default(),
                    message: report
                        .map(|r| r.message.to_string())
                        .unwrap_or_else(|| "not reported yet".into()),
                    worst: report.map(|r| r.worst_wire()).unwrap_or_default(),
                    observed_unix_ms: report.map(|r| r.observed_ms).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The versions of the tools the source's apps rendered with (`kustomize v5.7.1 (kubectl
    /// v1.34.5)`), or why a tool cannot run.
    async fn tools_of(&self, r: &SourceRecord) -> Vec<String> {
        let used: std::collections::BTreeSet<&str> = r
            .status
            .apps
            .values()
            .filter_map(|st| st.renderer.as_deref())
            .filter(|k| *k != "manifests")
            .collect();
        if used.is_empty() {
            return Vec::new();
        }
        let tools = self.sources.tools().clone();
        let versions = tokio::task::spawn_blocking(move || tools.versions().clone())
            .await
            .ok();
        let Some(v) = versions else {
            return Vec::new();
        };
        used.into_iter()
            .map(|tool| {
                let version = if tool == "helm" {
                    &v.helm
                } else {
                    &v.kustomize
                };
                match version {
                    Ok(v) => v.clone(),
                    Err(e) => format!("{tool}: unavailable ({e})"),
                }
            })
            .collect()
    }

    async fn source_view(&self, r: &SourceRecord) -> Result<Source, Status> {
        let mut clusters = std::collections::BTreeMap::new();
        for app in r.status.apps.keys() {
            clusters.insert(app, self.rollouts.clusters_of(app, &r.name).await?);
        }
        Ok(Source {
            name: r.name.clone(),
            url: crate::git::redact_url(&r.url),
            r#ref: r.reference.clone(),
            resolved_ref: r.status.resolved_ref.clone().unwrap_or_default(),
            path: r.path.clone(),
            interval_seconds: r.interval_ms / 1000,
            commit: r.status.commit.clone().unwrap_or_default(),
            last_fetch_unix_ms: r.status.last_fetch_ms,
            error: r.status.error.clone().unwrap_or_default(),
            secret_file: r.secret_file.clone().unwrap_or_default(),
            apps: r.status.apps.keys().cloned().collect(),
            webhook_secret_file: r.webhook_secret_file.clone().unwrap_or_default(),
            render_network: r.render_network,
            tools: self.tools_of(r).await,
            app_states: r
                .status
                .apps
                .iter()
                .map(|(name, st)| SourceApp {
                    name: name.clone(),
                    commit: st.commit.clone().unwrap_or_default(),
                    error: st.error.clone().unwrap_or_default(),
                    removal: st.removal.clone().unwrap_or_default(),
                    clusters: clusters.remove(name).unwrap_or_default(),
                    renderer: st.renderer.clone().unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// Builds the view of one app: per targeted cluster the desired and the reported revision.
    async fn app_view(&self, source: &SourceRecord, name: &str) -> Result<App, Status> {
        let st = source
            .status
            .apps
            .get(name)
            .ok_or_else(|| Status::not_found(format!("unknown app {name:?}")))?;
        Ok(App {
            name: name.to_string(),
            source: source.name.clone(),
            commit: st.commit.clone().unwrap_or_default(),
            error: st.error.clone().unwrap_or_default(),
            clusters: self
                .app_clusters(name, &self.rollouts.clusters_of(name, &source.name).await?)
                .await?,
            removal: st.removal.clone().unwrap_or_default(),
            conflicts: Vec::new(),
        })
    }

    /// Per cluster that has an entry of `app`: the desired and the reported revision.
    async fn app_clusters(&self, name: &str, of: &[String]) -> Result<Vec<AppCluster>, Status> {
        let mut clusters = Vec::new();
        for cluster in of {
            let Some(entry) = self.rollouts.entry_of(name, cluster).await? else {
                continue;
            };
            let status = self.desired.status(cluster).await?;
            let report = status.apps.iter().find(|a| *a.app == *name);
            let applied = report
                .filter(|r| r.phase == Phase::Applied)
                .map(|r| r.revision.to_string())
                .unwrap_or_default();
            clusters.push(AppCluster {
                name: cluster.clone(),
                desired_revision: entry.revision.clone(),
                applied_revision: applied,
                bundle_digest: entry.bundle_digest.clone(),
                phase: report.map(|r| r.phase).unwrap_or_default().into(),
                message: report.map(|r| r.message.to_string()).unwrap_or_default(),
                health: report.map(|r| r.health).unwrap_or_default().into(),
            });
        }
        Ok(clusters)
    }

    /// The view of an app whose source is gone but whose removal is not complete yet.
    async fn leaving_app_view(&self, rec: &AppRollout) -> Result<App, Status> {
        let pending: Vec<String> = rec
            .removal
            .iter()
            .flat_map(|rm| rm.pending().iter().collect::<Vec<_>>())
            .map(|c| self.rollouts.name_of(c))
            .collect();
        Ok(App {
            name: rec.app.clone(),
            source: rec.source.clone(),
            commit: String::new(),
            error: String::new(),
            clusters: self.app_clusters(&rec.app, &pending).await?,
            removal: rec
                .removal
                .as_ref()
                .map(|rm| rm.note(&rec.app))
                .unwrap_or_default(),
            conflicts: Vec::new(),
        })
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
        self.sources.trigger_all();
        let line = JoinToken {
            hub: self.endpoints.first().unwrap_or(&self.hub_address).clone(),
            hubs: self.endpoints.clone(),
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
        let mut views = Vec::with_capacity(clusters.len());
        for c in &clusters {
            let mut view = self.cluster_view(c);
            if req.get_ref().with_apps && !c.revoked {
                view.apps = self.cluster_apps(&c.name).await?;
            }
            views.push(view);
        }
        Ok(Response::new(ListClustersResponse { clusters: views }))
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        self.authorize(&req)?;
        let rec = self.registry.get_cluster(&req.get_ref().name).await?;
        let mut view = self.cluster_view(&rec);
        view.apps = self.cluster_apps(&rec.name).await?;
        Ok(Response::new(view))
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
        self.sources.trigger_all();
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
        self.sources.trigger_all();
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

    async fn add_source(&self, req: Request<AddSourceRequest>) -> Result<Response<Source>, Status> {
        let admin = self.authorize(&req)?;
        let r = req.into_inner();
        let interval = if r.interval_seconds == 0 {
            crate::engine::sources::DEFAULT_INTERVAL
        } else {
            Duration::from_secs(r.interval_seconds)
        };
        let secret = (!r.secret_file.is_empty()).then_some(r.secret_file);
        let hook = (!r.webhook_secret_file.is_empty()).then_some(r.webhook_secret_file);
        let rec = self
            .sources
            .add(crate::engine::sources::NewSource {
                name: r.name,
                url: r.url,
                reference: r.r#ref,
                path: r.path,
                interval,
                secret_file: secret,
                webhook_secret_file: hook,
                render_network: r.render_network,
            })
            .await?;
        tracing::info!(%admin, source = %rec.name, url = %crate::git::redact_url(&rec.url), "source added");
        Ok(Response::new(self.source_view(&rec).await?))
    }

    async fn list_sources(
        &self,
        req: Request<ListSourcesRequest>,
    ) -> Result<Response<ListSourcesResponse>, Status> {
        self.authorize(&req)?;
        let list = self.sources.list().await?;
        let mut sources = Vec::with_capacity(list.len());
        for s in &list {
            sources.push(self.source_view(s).await?);
        }
        Ok(Response::new(ListSourcesResponse { sources }))
    }

    async fn get_source(&self, req: Request<GetSourceRequest>) -> Result<Response<Source>, Status> {
        self.authorize(&req)?;
        let rec = self.sources.get(&req.get_ref().name).await?;
        Ok(Response::new(self.source_view(&rec).await?))
    }

    async fn remove_source(
        &self,
        req: Request<RemoveSourceRequest>,
    ) -> Result<Response<Source>, Status> {
        let who = self.authorize_uri(&req)?;
        let r = req.into_inner();
        let plan = self.sources.removal_plan(&r.name).await?;
        let rec = if r.dry_run {
            self.sources.get(&r.name).await?
        } else {
            let apps: Vec<String> = plan
                .iter()
                .map(|(app, clusters)| format!("{app} ({} clusters)", clusters.len()))
                .collect();
            self.rollouts
                .audit()
                .record(crate::state::audit::AuditEntry {
                    who: who.clone(),
                    action: "source.remove".into(),
                    detail: format!(
                        "source {}{}: {}",
                        r.name,
                        if r.keep_resources {
                            ", keeping resources"
                        } else {
                            ""
                        },
                        apps.join(", ")
                    ),
                    ..Default::default()
                })
                .await?;
            let rec = self.sources.remove(&r.name, r.keep_resources, &who).await?;
            tracing::info!(admin = %who, source = %rec.name, keep_resources = r.keep_resources, "source removed");
            rec
        };
        let mut view = self.source_view(&rec).await?;
        view.app_states = plan
            .into_iter()
            .map(|(name, clusters)| SourceApp {
                name,
                clusters,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(view))
    }

    async fn sync_source(
        &self,
        req: Request<SyncSourceRequest>,
    ) -> Result<Response<Source>, Status> {
        self.authorize(&req)?;
        let rec = self.sources.sync_now(&req.get_ref().name).await?;
        Ok(Response::new(self.source_view(&rec).await?))
    }

    async fn list_apps(
        &self,
        req: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        self.authorize(&req)?;
        let mut apps = Vec::new();
        for s in self.sources.list().await? {
            for name in s.status.apps.keys() {
                apps.push(self.app_view(&s, name).await?);
            }
        }
        Ok(Response::new(ListAppsResponse { apps }))
    }

    async fn get_app(&self, req: Request<GetAppRequest>) -> Result<Response<App>, Status> {
        self.authorize(&req)?;
        let name = req.get_ref().name.clone();
        // The owner's view first: another source may list the same name with an error.
        let owner = self.rollouts.owner(&name).await?;
        let sources = self.sources.list().await?;
        let listing = sources
            .iter()
            .filter(|s| s.status.apps.contains_key(&name))
            .min_by_key(|s| Some(&s.name) != owner.as_ref());
        if let Some(s) = listing {
            let mut app = self.app_view(s, &name).await?;
            app.conflicts = sources
                .iter()
                .filter(|o| o.name != s.name)
                .filter_map(|o| {
                    let e = o.status.apps.get(&name)?.error.as_ref()?;
                    Some(format!("source {}: {e}", o.name))
                })
                .collect();
            return Ok(Response::new(app));
        }
        match self.rollouts.get(&name).await {
            Ok(rec) if rec.deleted => Ok(Response::new(self.leaving_app_view(&rec).await?)),
            _ => Err(crate::state::error::HubError::UnknownApp(name).into()),
        }
    }

    async fn list_rollouts(
        &self,
        req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        self.authorize(&req)?;
        let all = self.rollouts.all().await?;
        Ok(Response::new(ListRolloutsResponse {
            rollouts: all.iter().map(|r| self.rollout_out(r)).collect(),
        }))
    }

    /// The app's rollout record with the errors that keep its newest commit out; an app that
    /// never had a good revision (its first rendering failed, another source owns the name)
    /// is shown with its errors alone, not as unknown.
    async fn get_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        self.authorize(&req)?;
        let app = req.into_inner().app;
        let sources = self.sources.list().await?;
        let errors = app_errors(&sources, &app);
        let mut out = match self.rollouts.get(&app).await {
            Ok(rec) => self.rollout_out(&rec),
            Err(crate::state::error::HubError::UnknownApp(_)) if !errors.is_empty() => Rollout {
                source: sources
                    .iter()
                    .find(|s| s.status.apps.contains_key(&app))
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                app,
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        out.errors = errors;
        Ok(Response::new(out))
    }

    async fn approve_stage(
        &self,
        req: Request<ApproveStageRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let who = self.authorize_uri(&req)?;
        let r = req.into_inner();
        let rec = self.rollouts.approve(&r.app, &r.stage, &who).await?;
        Ok(Response::new(self.rollout_out(&rec)))
    }

    async fn pause_rollout(
        &self,
        req: Request<PauseRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let who = self.authorize_uri(&req)?;
        let rec = self
            .rollouts
            .set_paused(&req.get_ref().app, true, &who)
            .await?;
        Ok(Response::new(self.rollout_out(&rec)))
    }

    async fn resume_rollout(
        &self,
        req: Request<ResumeRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let who = self.authorize_uri(&req)?;
        let rec = self
            .rollouts
            .set_paused(&req.get_ref().app, false, &who)
            .await?;
        Ok(Response::new(self.rollout_out(&rec)))
    }

    async fn rollback_rollout(
        &self,
        req: Request<RollbackRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let who = self.authorize_uri(&req)?;
        let r = req.into_inner();
        let to = (!r.to.is_empty()).then_some(r.to.as_str());
        let rec = self.rollouts.rollback(&r.app, to, &who).await?;
        Ok(Response::new(self.rollout_out(&rec)))
    }

    async fn pin_cluster(
        &self,
        req: Request<PinClusterRequest>,
    ) -> Result<Response<PinClusterResponse>, Status> {
        let who = self.authorize_uri(&req)?;
        let r = req.into_inner();
        self.registry.get_cluster(&r.cluster).await?;
        let revision = self
            .rollouts
            .pin(&r.cluster, &r.app, &r.revision, &who)
            .await?;
        Ok(Response::new(PinClusterResponse {
            cluster: r.cluster,
            app: r.app,
            revision,
        }))
    }

    async fn unpin_cluster(
        &self,
        req: Request<UnpinClusterRequest>,
    ) -> Result<Response<PinClusterResponse>, Status> {
        let who = self.authorize_uri(&req)?;
        let r = req.into_inner();
        let rec = self.rollouts.get(&r.app).await?;
        let revision = rec
            .pins
            .iter()
            .find(|(c, _)| self.rollouts.name_of(**c) == r.cluster)
            .map(|(_, rev)| rev.clone())
            .unwrap_or_default();
        self.rollouts.unpin(&r.cluster, &r.app, &who).await?;
        Ok(Response::new(PinClusterResponse {
            cluster: r.cluster,
            app: r.app,
            revision,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.authorize(&req)?;
        let limit = match req.get_ref().limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => n as usize,
        };
        let entries = self.rollouts.audit().list(limit).await?;
        Ok(Response::new(ListAuditResponse {
            entries: entries.iter().map(audit_view).collect(),
        }))
    }

    async fn get_hub_status(
        &self,
        req: Request<GetHubStatusRequest>,
    ) -> Result<Response<HubStatus>, Status> {
        self.authorize(&req)?;
        let h = &self.replicas;
        let role = h.role.borrow().clone();
        let view = |r: &ReplicaInfo, leader: bool| HubReplica {
            name: r.name.clone(),
            endpoint: r.endpoint.clone(),
            started_unix_ms: r.started_ms,
            version: r.version.clone(),
            leader,
        };
        let (store, replicas) = match &h.etcd {
            None => ("redb", vec![view(&h.me, true)]),
            Some(etcd) => {
                let unavailable = |e: crate::store::StoreError| {
                    Status::unavailable(format!("reading the hub replicas: {e}"))
                };
                let leader = election::leader(etcd).await.map_err(unavailable)?;
                let all = election::replicas(etcd).await.map_err(unavailable)?;
                let lead = leader.map(|l| l.name);
                let replicas = all
                    .iter()
                    .map(|r| view(r, lead.as_deref() == Some(r.name.as_str())))
                    .collect();
                ("etcd", replicas)
            }
        };
        Ok(Response::new(HubStatus {
            store: store.into(),
            replicas,
            answered_by: h.me.name.clone(),
            role: match role {
                Role::Leader { .. } => "leader",
                Role::Follower { .. } => "follower",
                Role::Candidate => "candidate",
            }
            .into(),
        }))
    }
}
