//! The plain-HTTP side port: `/healthz`, `/readyz`, `/metrics` and the git webhooks
//! (`POST /hooks/git/<source>`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::webhook::{Signatures, verify};
use crate::engine::fleet::FleetSources;
use crate::engine::sources::Sources;
use crate::store::SharedStore;
use crate::telemetry::metrics::Metrics;

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: SharedStore,
    sources: Option<Sources>,
    /// Where the scrape-time fleet gauges are read from.
    fleet: Option<FleetSources>,
}

/// Serves the side port until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: SharedStore,
    sources: Option<Sources>,
    fleet: Option<FleetSources>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/hooks/git/{name}", post(git_webhook))
        .with_state(HttpState {
            metrics,
            store,
            sources,
            fleet,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

/// Ready when the store answers. The body also says which rendering tools this hub runs (a
/// missing tool does not make it unready: only the apps that need it fail to render).
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let tools = match &s.sources {
        Some(sources) => {
            let tools = sources.tools().clone();
            tokio::task::spawn_blocking(move || tool_lines(&tools))
                .await
                .unwrap_or_default()
        }
        None => String::new(),
    };
    match s.store.revision().await {
        Ok(_) => (StatusCode::OK, format!("ready\n{tools}")),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n{tools}"),
        ),
    }
}

/// `kustomize: …`, `helm: …` and how renders are kept off the network, a line each.
pub fn tool_lines(tools: &crate::render::Tools) -> String {
    let versions = tools.versions();
    let line = |name: &str, v: &Result<String, String>| match v {
        Ok(v) => format!("{name}: {v}\n"),
        Err(e) => format!("{name}: unavailable ({e})\n"),
    };
    format!(
        "{}{}render network isolation: {}\n",
        line("kustomize", &versions.kustomize),
        line("helm", &versions.helm),
        tools.isolation().as_str()
    )
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    let fleet = match &s.fleet {
        Some(f) => match f.snapshot().await {
            Ok(snap) => Some(snap),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the fleet state; app and cluster gauges left out");
                None
            }
        },
        None => None,
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode_with(fleet.as_ref()),
    )
}

async fn git_webhook(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(sources) = s.sources else {
        return (StatusCode::NOT_FOUND, "no sources on this hub\n".into());
    };
    let rec = match sources.get(&name).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")),
    };
    let Some(secret_path) = rec.webhook_secret_file else {
        tracing::warn!(source = %name, "webhook refused: the source has no webhook secret");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "source {name:?} has no webhook secret; unauthenticated webhooks are refused\n"
            ),
        );
    };
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(source = %name, path = %secret_path, error = %e, "cannot read the webhook secret");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the webhook secret\n".into(),
            );
        }
    };
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let sig = Signatures {
        github: h("x-hub-signature-256"),
        gitea: h("x-gitea-signature"),
        gitlab_token: h("x-gitlab-token"),
    };
    if let Err(e) = verify(&secret, &body, &sig) {
        tracing::warn!(source = %name, error = %e, "webhook refused");
        s.metrics
            .webhooks
            .get_or_create(&crate::telemetry::metrics::ResultLabel {
                result: "refused".into(),
            })
            .inc();
        return (StatusCode::UNAUTHORIZED, format!("{e}\n"));
    }
    s.metrics
        .webhooks
        .get_or_create(&crate::telemetry::metrics::ResultLabel {
            result: "ok".into(),
        })
        .inc();
    sources.request(&name);
    tracing::info!(source = %name, "webhook accepted; fetching now");
    (
        StatusCode::ACCEPTED,
        format!("sync of {name:?} triggered\n"),
    )
}
