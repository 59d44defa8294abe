//! The simulated cluster: an in-memory Kubernetes API server served behind `kube::Client`
//! through a tower service, so the agent drives it with exactly the code that drives a real one.
//!
//! Why our own and not `kube-fake-client`: that crate ignores `dryRun` (a dry-run apply really
//! changes the object), serves no discovery (`/api`, `/apis`, `/apis/{group}/{version}`), does
//! not serve the resources of CRDs created through the API, keeps no `generation`, and its
//! apply is a plain JSON merge (fields dropped from an applied config are never removed). The
//! agent needs all of that. Dropping it also removes the jsonschema → reqwest → aws-lc-rs chain
//! from the agent's build.
//!
//! What it serves:
//! - `/version`, discovery (legacy and aggregated v2), a fixed table of built-in kinds
//!   (`resources`) and the kinds of CustomResourceDefinitions once they are Established;
//! - get, list (label and field selectors), create, replace, merge / strategic (as merge) /
//!   JSON patch, server-side apply with field ownership and conflicts (`fields`), delete
//!   (cascading for Namespaces and CRDs), `dryRun=All`, status subresources, and errors as
//!   Kubernetes `Status` objects with the real server's reasons and messages;
//! - objects of the built-in kinds checked against their OpenAPI schema on every write path
//!   (`schema`: wrong types, unknown fields under `fieldValidation`, quantities, base64), with
//!   the real server's codes and messages, spelled as Go spells them (`gotext`);
//! - a status simulator (`kubelet`): workloads become ready `ready_delay` after each change
//!   of their generation, or fail when annotated `flotilla.io/simulate: fail`.
//!
//! Not served: watches, other subresources (scale, logs, exec), admission, garbage collection
//! by owner references, conversion between versions of a CRD.
//!
//! **Architecture Invariant:** handlers are synchronous under one `std::sync::Mutex`; the tower
//! service answers with ready futures. The only tasks are the simulator's delayed settles,
//! each a sleep plus one locked update, holding the cluster weakly.

mod api;
mod config;
mod delete;
mod fields;
mod gotext;
mod kubelet;
mod objects;
mod openapi;
mod patch;
mod resources;
mod schema;
#[cfg(test)]
mod schema_tests;
mod selector;
mod store;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::Full;
use serde_json::Value;

pub use config::SimConfig;
pub use kubelet::SIMULATE_ANNOTATION;
use store::{PendingSettle, State};

/// An in-memory Kubernetes API server. Cheap to clone; clones share one cluster, which lives
/// as long as any clone or any client made from it.
#[derive(Clone)]
pub struct SimCluster {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

/// One request the simulated API server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// A query parameter, URL-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

impl SimCluster {
    /// A fresh cluster holding only `config.namespaces`. Call inside a tokio runtime (the
    /// status simulator spawns its delayed settles there).
    pub fn new(config: SimConfig) -> Self {
        let mut state = State::new(config.ready_delay, config.record_requests);
        state.seed_namespaces(&config.namespaces);
        tracing::info!(
            ready_delay = ?config.ready_delay,
            namespaces = ?config.namespaces,
            "cluster is simulated: an in-memory Kubernetes API, not a real cluster"
        );
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
            }),
        }
    }

    /// A client of this cluster (default namespace `default`). Needs a tokio runtime.
    pub fn client(&self) -> kube::Client {
        let service = SimService {
            inner: self.inner.clone(),
        };
        kube::Client::new(service, "default")
    }

    /// The last requests received (at most `SimConfig::record_requests`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.inner.lock().requests.clear();
    }

    /// One stored object as the API would serve it, or `None`.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.inner
            .lock()
            .inspect(api_version, kind, namespace, name)
    }

    /// Every stored object.
    pub fn objects(&self) -> Vec<Value> {
        self.inner.lock().all_objects()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The tower service `kube::Client` sends its requests to.
#[derive(Clone)]
struct SimService {
    inner: Arc<Inner>,
}

type Response = http::Response<Full<Bytes>>;

impl tower::Service<http::Request<kube::client::Body>> for SimService {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let reply = match read_body(body) {
            Ok(body) => serve(&self.inner, &parts, body),
            Err(message) => api::ApiError::internal(message).into_reply(),
        };
        let body = serde_json::to_vec(&reply.body).unwrap_or_default();
        let mut response = http::Response::builder()
            .status(reply.code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())));
        for text in &reply.warnings {
            // A text that is no header value (not ASCII) is left out rather than the answer.
            if let Ok(value) = http::HeaderValue::from_str(&warning_header(text)) {
                response.headers_mut().append(http::header::WARNING, value);
            }
        }
        ready(Ok(response))
    }
}

/// A `Warning` header as the real server writes one (apimachinery `net.NewWarningHeader`:
/// code 299, agent `-`, the text quoted with `"` and `\` escaped).
fn warning_header(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!("299 - \"{quoted}\"")
}

/// Reads a request body that is already all there (kube sends bodies built from bytes).
fn read_body(body: kube::client::Body) -> Result<Bytes, String> {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push(data);
                }
            }
            Poll::Ready(Some(Err(e))) => return Err(format!("reading the request body: {e}")),
            Poll::Pending => {
                return Err(
                    "the simulated cluster takes only request bodies that are complete when sent"
                        .into(),
                );
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => Bytes::from(chunks.concat()),
    })
}

fn serve(inner: &Arc<Inner>, parts: &http::request::Parts, body: Bytes) -> api::Reply {
    let header = |h| parts.headers.get(h).and_then(|v| v.to_str().ok());
    let content_type = header(http::header::CONTENT_TYPE);
    let req = api::Req {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        content_type,
        accept: header(http::header::ACCEPT),
        body: &body,
    };
    let (reply, pending) = {
        let mut state = inner.lock();
        state.record(RecordedRequest {
            method: parts.method.to_string(),
            path: req.path.to_string(),
            query: req.query.to_string(),
            content_type: content_type.map(String::from),
            body: body.to_vec(),
        });
        let reply = api::handle(&mut state, &req);
        (reply, std::mem::take(&mut state.pending))
    };
    for settle in pending {
        schedule(Arc::downgrade(inner), settle);
    }
    reply
}

/// Runs one delayed settle; a dropped cluster settles nothing.
fn schedule(inner: Weak<Inner>, settle: PendingSettle) {
    let delay = settle.delay;
    let run = move || {
        if let Some(inner) = inner.upgrade() {
            inner.lock().settle(&settle);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                tokio::time::sleep(delay).await;
                run();
            });
        }
        // Outside a runtime there is nothing to wait on: settle at once.
        Err(_) => run(),
    }
}
