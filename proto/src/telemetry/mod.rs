//! Logging and tracing setup shared by the hub, agent and CLI binaries.

pub mod traces;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use traces::{Export, SpanForwarder, SpanRelay, TraceConfig};

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal (never in `kubectl logs`).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Installs a `tracing` subscriber writing to stderr; `RUST_LOG` overrides `default_filter`.
/// `json` switches to one JSON object per line. Safe to call more than once (later calls no-op).
pub fn init(default_filter: &str, json: bool) {
    install(default_filter, json, None);
}

/// The tracer provider of the process, if traces are exported; flushed by [`Tracing::shutdown`].
#[derive(Debug, Default)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    pub fn active(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered. Blocking: call it off the async workers.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Like [`init`], and when `traces` is set also exports spans of the flotilla crates (INFO
/// and up, whatever `RUST_LOG` says about logs) through OpenTelemetry. Must be called inside
/// a Tokio runtime when traces are exported directly.
pub fn init_with_traces(
    default_filter: &str,
    json: bool,
    traces: Option<TraceConfig>,
) -> Result<Tracing, traces::TraceError> {
    let provider = traces.as_ref().map(traces::build_provider).transpose()?;
    install(default_filter, json, provider.as_ref());
    Ok(Tracing { provider })
}

fn install(default_filter: &str, json: bool, provider: Option<&SdkTracerProvider>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour codes only for a person at a terminal: piped or collected logs stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let mut layers = vec![fmt];
    if let Some(p) = provider {
        let spans = Targets::new()
            .with_target("flotilla_hub", LevelFilter::INFO)
            .with_target("flotilla_agent", LevelFilter::INFO)
            .with_target("flotilla_proto", LevelFilter::INFO);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("flotilla"))
                .with_filter(spans)
                .boxed(),
        );
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}
