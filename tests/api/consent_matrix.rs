//! Every kind against the same refusals (SPEC §8, the per-kind list): a documented-shape
//! event applied; a forged credential or signature, a stale timestamp (the kinds that sign
//! one), a malformed and an oversized body refused; a replay, an older event and an unknown
//! address ignored. Each changes nothing, and each is counted under its kind.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePublicKey;
use serde_json::{Value, json};

use crate::admin::TOKEN;
use crate::consent::{
    BREVO_TOKEN, MAILCHIMP_SECRET, MAILGUN_KEY, RESEND_SECRET, brevo_event, consent_of, data,
    mailchimp_form, mailgun_event, post_brevo, post_mailchimp, post_mailgun, post_resend,
    post_sendgrid, register, resend_event,
};
use crate::helpers::{TestApp, spawn_app_with};

/// A Svix secret that is not the configured one.
const OTHER_RESEND_SECRET: &str = "whsec_bm90IHRoZSBzZWNyZXQgYXQgYWxsIG5vLW5vLW5v";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Mailchimp,
    Sendgrid,
    Brevo,
    Resend,
    Mailgun,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Mailchimp,
        Kind::Sendgrid,
        Kind::Brevo,
        Kind::Resend,
        Kind::Mailgun,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Mailchimp => "mailchimp",
            Kind::Sendgrid => "sendgrid",
            Kind::Brevo => "brevo",
            Kind::Resend => "resend",
            Kind::Mailgun => "mailgun",
        }
    }

    /// The kind's event for `which` (0, 1) and the state it sets.
    fn event(self, which: usize) -> (&'static str, &'static str) {
        let events = match self {
            Kind::Mailchimp => [("unsubscribe", "unsubscribed"), ("cleaned", "cleaned")],
            Kind::Sendgrid => [
                ("unsubscribe", "unsubscribed"),
                ("spamreport", "complained"),
            ],
            Kind::Brevo => [("unsubscribed", "unsubscribed"), ("spam", "complained")],
            Kind::Resend => [
                ("contact.updated", "unsubscribed"),
                ("email.complained", "complained"),
            ],
            Kind::Mailgun => [
                ("unsubscribed", "unsubscribed"),
                ("complained", "complained"),
            ],
        };
        events[which]
    }

    /// Whether the kind signs a timestamp (Mailchimp and Brevo sign nothing: their credential
    /// is a secret path or a token).
    fn signs_a_timestamp(self) -> bool {
        matches!(self, Kind::Sendgrid | Kind::Resend | Kind::Mailgun)
    }
}

/// How a request is made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    /// As the provider sends it, signed `signed_ago` ago.
    Valid,
    /// With a credential or key that is not the configured one.
    Forged,
    /// Signed ten minutes ago.
    Stale,
    /// Correctly signed, but not the kind's event shape.
    Malformed,
    /// Over `server.max_body_bytes`.
    Oversized,
}

/// SendGrid's key pair: the test's own, the public half configured as SendGrid shows it.
fn sendgrid_key() -> SigningKey {
    SigningKey::from_slice(&[42u8; 32]).expect("a scalar")
}

/// Event `which` of `kind` about `email` at `at`, named `id` where the kind names its events,
/// sent as `how` says.
async fn post(
    app: &TestApp,
    kind: Kind,
    how: How,
    which: usize,
    email: &str,
    at: DateTime<Utc>,
    id: &str,
) -> reqwest::Response {
    let now = Utc::now();
    let signed_at = if how == How::Stale {
        now - Duration::minutes(10)
    } else {
        now
    };
    let padding = "x".repeat(128 * 1024);
    let (event, _) = kind.event(which);
    match kind {
        Kind::Mailchimp => {
            let mut form = mailchimp_form(event, email, at);
            form.push(("data[id]".into(), id.into()));
            match how {
                How::Forged => post_mailchimp(app, "guessed-secret", &form).await,
                How::Malformed => {
                    post_mailchimp(app, MAILCHIMP_SECRET, &[("type".into(), event.into())]).await
                }
                How::Oversized => {
                    form.push(("data[padding]".into(), padding));
                    post_mailchimp(app, MAILCHIMP_SECRET, &form).await
                }
                How::Valid | How::Stale => post_mailchimp(app, MAILCHIMP_SECRET, &form).await,
            }
        }
        Kind::Sendgrid => {
            let body = match how {
                How::Malformed => json!({"hello": "world"}),
                How::Oversized => json!([{"padding": padding}]),
                _ => json!([{
                    "email": email, "timestamp": at.timestamp(), "event": event,
                    "sg_event_id": id, "sg_message_id": "14c5d75ce93.dfd.64b469",
                }]),
            }
            .to_string();
            let signer = if how == How::Forged {
                SigningKey::from_slice(&[43u8; 32]).expect("a scalar")
            } else {
                sendgrid_key()
            };
            post_sendgrid(app, signer, signed_at, body).await
        }
        Kind::Brevo => {
            let mut body = brevo_event(event, email, at);
            body["id"] = id.into();
            let bearer = format!("Bearer {BREVO_TOKEN}");
            match how {
                How::Forged => post_brevo(app, Some("Bearer guessed-token"), &body).await,
                How::Malformed => post_brevo(app, Some(&bearer), &json!({"hello": "world"})).await,
                How::Oversized => {
                    body["padding"] = padding.into();
                    post_brevo(app, Some(&bearer), &body).await
                }
                How::Valid | How::Stale => post_brevo(app, Some(&bearer), &body).await,
            }
        }
        Kind::Resend => {
            let secret = if how == How::Forged {
                OTHER_RESEND_SECRET
            } else {
                RESEND_SECRET
            };
            let mut body = resend_event(event, at, email);
            match how {
                How::Malformed => body = json!({"hello": "world"}),
                How::Oversized => body["padding"] = padding.into(),
                _ => {}
            }
            post_resend(app, secret, id, signed_at, &body).await
        }
        Kind::Mailgun => {
            let key = if how == How::Forged {
                "not-the-key"
            } else {
                MAILGUN_KEY
            };
            let mut body = mailgun_event(key, signed_at, data(event, id, email, at));
            match how {
                How::Malformed => body["event-data"] = json!({"hello": "world"}),
                How::Oversized => body["padding"] = padding.into(),
                _ => {}
            }
            post_mailgun(app, &body).await
        }
    }
}

async fn counted(app: &TestApp, kind: Kind, outcome: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("text");
    let wanted = format!(
        "signup_provider_events_total{{kind=\"{}\",outcome=\"{outcome}\"}} ",
        kind.name()
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn every_kind_applies_its_event_and_refuses_or_ignores_the_rest_counting_each() {
    let shown = STANDARD.encode(
        sendgrid_key()
            .verifying_key()
            .to_public_key_der()
            .expect("der")
            .as_bytes(),
    );
    let app = spawn_app_with(move |s| {
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.email_sync.resend.webhook_secret = Some(RESEND_SECRET.parse().expect("a whsec_ secret"));
        s.email_sync.mailchimp.webhook_secret = MAILCHIMP_SECRET.into();
        s.email_sync.brevo.webhook_token = BREVO_TOKEN.into();
        s.email_sync.sendgrid.webhook_public_key = Some(shown.parse().expect("the key"));
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    for (n, kind) in Kind::ALL.into_iter().enumerate() {
        let id = register(&app, n).await;
        let email = format!("user{n}@example.com");
        let at = Utc::now() - Duration::minutes(1);
        let (_, state) = kind.event(0);
        let taken = |response: reqwest::Response, what: &'static str| async move {
            assert_eq!(response.status().as_u16(), 200, "{kind:?}: {what}");
            let taken: Value = response.json().await.expect("json");
            taken["outcomes"].clone()
        };

        let applied = post(&app, kind, How::Valid, 0, &email, at, "ev-1").await;
        assert_eq!(taken(applied, "the event").await, json!(["applied"]));
        assert_eq!(consent_of(&app, &id).await["state"], state, "{kind:?}");

        // Refused, changing nothing: each a newer event of the other state.
        let later = at + Duration::seconds(30);
        let mut refusals = vec![
            (How::Forged, 401),
            (How::Malformed, 400),
            (How::Oversized, 413),
        ];
        if kind.signs_a_timestamp() {
            refusals.push((How::Stale, 401));
        }
        for (how, status) in &refusals {
            let response = post(&app, kind, *how, 1, &email, later, "ev-2").await;
            assert_eq!(response.status().as_u16(), *status, "{kind:?}: {how:?}");
        }

        // Ignored, changing nothing.
        let replay = post(&app, kind, How::Valid, 0, &email, at, "ev-1").await;
        assert_eq!(taken(replay, "a replay").await, json!(["ignored"]));
        let older = at - Duration::hours(1);
        let older = post(&app, kind, How::Valid, 1, &email, older, "ev-3").await;
        assert_eq!(taken(older, "an older event").await, json!(["ignored"]));
        let nobody = post(
            &app,
            kind,
            How::Valid,
            1,
            "nobody@example.com",
            later,
            "ev-4",
        )
        .await;
        assert_eq!(
            taken(nobody, "an unknown address").await,
            json!(["ignored"])
        );

        let consent = consent_of(&app, &id).await;
        assert_eq!(consent["state"], state, "{kind:?}: {consent}");
        assert_eq!(counted(&app, kind, "applied").await, 1.0, "{kind:?}");
        assert_eq!(counted(&app, kind, "ignored").await, 3.0, "{kind:?}");
        assert_eq!(
            counted(&app, kind, "rejected").await,
            refusals.len() as f64,
            "{kind:?}"
        );
    }
}
