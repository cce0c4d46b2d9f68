//! W3C trace context across the asynchronous boundary (SPEC §9).
//!
//! A request's span has a [`TraceParent`]: the client's trace (its `traceparent` header) or a
//! new one, and a span id of its own. A registration stores it on its outbox row; each
//! delivery attempt is a span of that trace, linked to the stored context, and the webhook kind
//! sends the attempt's `traceparent` to the provider. With an OTLP endpoint configured, the
//! spans are `tracing-opentelemetry`'s and are exported; without one, the ids are made here and
//! nothing leaves the process but the stored and sent headers.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, propagation::TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// One span's W3C trace context: `00-<trace id>-<span id>-<flags>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceParent(SpanContext);

impl TraceParent {
    /// A `traceparent` header's value, if it is a valid one (version 00 as the W3C
    /// recommendation reads it; all-zero ids are invalid).
    pub fn parse(header: &str) -> Option<Self> {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), header.trim().to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        let span = context.span().span_context().clone();
        span.is_valid().then_some(Self(span))
    }

    /// The header's value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.0.trace_id(),
            self.0.span_id(),
            self.0.trace_flags().to_u8()
        )
    }

    pub fn trace_id(&self) -> TraceId {
        self.0.trace_id()
    }

    pub fn span_id(&self) -> SpanId {
        self.0.span_id()
    }

    /// A span of a new trace.
    fn root() -> Self {
        Self::of(
            RandomIdGenerator::default().new_trace_id(),
            TraceFlags::SAMPLED,
        )
    }

    /// A new span of this one's trace.
    fn child(&self) -> Self {
        Self::of(self.0.trace_id(), self.0.trace_flags())
    }

    fn of(trace_id: TraceId, flags: TraceFlags) -> Self {
        Self(SpanContext::new(
            trace_id,
            RandomIdGenerator::default().new_span_id(),
            flags,
            false,
            TraceState::default(),
        ))
    }

    /// As the remote parent of a span.
    fn as_parent(&self) -> Context {
        Context::new().with_remote_span_context(self.0.clone())
    }
}

/// `span`, a request's, joins the caller's trace (`incoming`, its `traceparent`) or starts one:
/// its own trace context, which the request hands on (a registration stores it).
pub fn request_span(span: &tracing::Span, incoming: Option<&TraceParent>) -> TraceParent {
    if let Some(parent) = incoming {
        let _ = span.set_parent(parent.as_parent());
    }
    exported(span).unwrap_or_else(|| incoming.map_or_else(TraceParent::root, TraceParent::child))
}

/// A delivery attempt's `span`: for one row, a span of the row's trace (`stored`, the context of
/// the request that wrote it), linked to it; for a batch, a span of its own linked to each row's.
/// Its own trace context, for the provider's `traceparent`.
pub fn attempt_span<'a>(
    span: &tracing::Span,
    stored: impl IntoIterator<Item = &'a TraceParent>,
) -> TraceParent {
    let stored: Vec<&TraceParent> = stored.into_iter().collect();
    if let [row] = stored[..] {
        let _ = span.set_parent(row.as_parent());
    }
    for row in &stored {
        span.add_link(row.0.clone());
    }
    exported(span).unwrap_or_else(|| match stored[..] {
        [row] => row.child(),
        _ => TraceParent::root(),
    })
}

/// Whether this process exports spans: set once, by `telemetry::init`.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

/// Names an exported span (`otel.name`, `otel.kind`, fields the span declares empty): only when
/// spans are exported, so that log lines do not carry them. Before [`request_span`] or
/// [`attempt_span`]: the layer takes a span's name only until its context is made.
pub fn name_exported(span: &tracing::Span, name: impl std::fmt::Display, kind: &'static str) {
    if EXPORTING.load(Ordering::Relaxed) {
        span.record("otel.name", tracing::field::display(name));
        span.record("otel.kind", kind);
    }
}

/// The span's context as the OpenTelemetry layer made it; None when no layer is installed
/// (no OTLP endpoint), when the ids are made here.
fn exported(span: &tracing::Span) -> Option<TraceParent> {
    let context = span.context();
    let span = context.span().span_context().clone();
    span.is_valid().then_some(TraceParent(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_it_was_written() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).expect("valid");
        assert_eq!(parsed.header(), header);
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn invalid_traceparents_are_none() {
        for header in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn without_an_exporter_a_request_keeps_the_callers_trace_with_a_span_of_its_own() {
        let caller = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        let request = request_span(&tracing::Span::none(), Some(&caller));
        assert_eq!(request.trace_id(), caller.trace_id());
        assert_ne!(request.span_id(), caller.span_id());
        let attempt = attempt_span(&tracing::Span::none(), [&request]);
        assert_eq!(attempt.trace_id(), caller.trace_id());
        assert_ne!(attempt.span_id(), request.span_id());
        let fresh = request_span(&tracing::Span::none(), None);
        assert_ne!(fresh.trace_id(), caller.trace_id());
        assert_eq!(
            TraceParent::parse(&fresh.header()).map(|t| t.header()),
            Some(fresh.header())
        );
    }
}
