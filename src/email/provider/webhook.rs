//! The `webhook` kind (SPEC §3.1): each row POSTed to `email_sync.url`, signed per Standard
//! Webhooks; its answer classified as every provider's.

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;

use super::*;
use crate::email::webhook::{WebhookKey, body, sign};
use crate::telemetry::trace::TraceParent;

/// Delivers outbox rows to `email_sync.url`. One `reqwest` client (one connection pool).
pub struct WebhookProvider {
    client: reqwest::Client,
    /// `email_sync.url`.
    url: reqwest::Url,
    /// `email_sync.secret`, decoded.
    key: WebhookKey,
}

impl WebhookProvider {
    pub(crate) fn new(
        url: reqwest::Url,
        key: WebhookKey,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = client(timeout)?;
        Ok(Self { client, url, key })
    }

    /// One attempt for outbox row `id` with its `payload`, the attempt's span `trace` sent as its
    /// `traceparent` (SPEC §9).
    pub(crate) async fn deliver_payload(
        &self,
        id: Uuid,
        event: entity::email_outbox::EventType,
        payload: &str,
        trace: TraceParent,
    ) -> AttemptOutcome {
        let now = Utc::now();
        let body = match body(event, payload, now) {
            Ok(body) => body,
            Err(e) => {
                return AttemptOutcome::Permanent {
                    status: None,
                    error: format!("stored payload is not JSON: {e}"),
                };
            }
        };
        let id = id.to_string();
        let timestamp = now.timestamp();
        let signature = sign(self.key.expose(), &id, timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("traceparent", trace.header())
            .body(body);
        attempt(
            request,
            "retry-after",
            "email_sync.url and email_sync.secret",
        )
        .await
    }

    /// `signup doctor`'s read-only call (SPEC §9): a signed `ping` the receiver may ignore,
    /// its id `ping-<uuid>` (no outbox row has it).
    pub(super) fn ping(&self) -> reqwest::RequestBuilder {
        let now = Utc::now();
        let body = serde_json::json!({
            "type": "ping",
            "data": {},
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .to_string();
        let id = format!("ping-{}", Uuid::new_v4());
        let signature = sign(self.key.expose(), &id, now.timestamp(), &body);
        self.client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", signature)
            .body(body)
    }
}
