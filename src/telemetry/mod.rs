//! Logging, and traces when configured (SPEC §9).
//!
//! Logs: a `tracing` subscriber writing text or JSON lines to stderr. Lines are formatted where
//! they are logged and written by a thread of their own, through a buffer it flushes whenever
//! it has caught up: the thread that logs (the RegistrationActor logs one `registered` line per
//! user right after its commit) never waits on a write to stderr, and a burst of lines is a few
//! writes, not one each. Nothing is dropped: when 128 000 lines wait, logging waits too.
//! Colours only when stderr is a terminal (journald and files get plain text).
//!
//! Traces: with `telemetry.otlp_endpoint` set, signup's spans (each request, each delivery
//! attempt) are exported over OTLP/HTTP (JSON) by a batch processor on a thread of its own;
//! unset, no span leaves the process. [`trace`] carries a request's trace to its deliveries.

pub mod trace;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::configuration::{LogFormat, LogSettings, TelemetrySettings};

/// Keep it until the process ends: dropped, it writes out the buffered log lines and exports
/// the spans not yet sent.
#[must_use = "dropping it stops the log writer and the span exporter"]
pub struct Telemetry {
    _log: WorkerGuard,
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take()
            && let Err(e) = tracer.shutdown()
        {
            eprintln!("signup: the last spans were not exported: {e}");
        }
    }
}

/// Why the span exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber once; later calls (tests) are no-ops. `RUST_LOG` wins over
/// `log.level` when set (for log lines; spans are exported whatever the level).
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    // RUST_LOG, when set and valid, wins; `log.level` was parsed with the configuration.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| log.level.env_filter());
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("signup-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let lines = match log.format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let tracer = telemetry.otlp_endpoint.as_ref().map(exporter).transpose()?;
    let spans = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("signup"))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.is_span() && metadata.target().starts_with("signup")
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .is_ok();
    trace::set_exporting(installed && tracer.is_some());
    Ok(Telemetry {
        _log: guard,
        tracer,
    })
}

/// A batch exporter to `<endpoint>/v1/traces`, OTLP JSON. Built on a thread of its own: its
/// blocking HTTP client must not be made (or dropped) on an async runtime's thread.
fn exporter(endpoint: &url::Url) -> Result<SdkTracerProvider, TelemetryError> {
    let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let built = std::thread::spawn(move || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces)
            .build()
    })
    .join()
    .map_err(|_| TelemetryError("building the exporter panicked".into()))?
    .map_err(|e| TelemetryError(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("signup")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(built)
        .with_resource(resource)
        .build())
}
