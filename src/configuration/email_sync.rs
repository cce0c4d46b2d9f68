//! `email_sync`: the provider kind, the email sync's own keys, and one section per provider
//! kind (SPEC §4.5, §5).

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSyncSettings {
    /// The provider's protocol.
    pub kind: ProviderKind,
    /// Where events are POSTed.
    #[serde(deserialize_with = "required_http_url")]
    pub url: Url,
    /// The signing key, decoded from `whsec_<base64>`; best given as `SIGNUP_EMAIL_SYNC__SECRET`.
    pub secret: Option<WebhookKey>,
    /// Timeout of one delivery attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests to the provider in flight at once; unset = the provider's documented limit
    /// (Mailchimp 10 connections per key), else 16. See [`EmailSyncSettings::in_flight`].
    pub max_in_flight: Option<NonZeroUsize>,
    /// Rows one request carries at most, where the provider's API takes a batch; unset = the
    /// API's maximum (Mailchimp 500, SendGrid 1000, Mailgun 1000), 1 for the others. See
    /// [`EmailSyncSettings::batch`].
    pub max_batch: Option<NonZeroUsize>,
    /// Requests a second to the provider at most, across all deliveries; 0 = unlimited; unset =
    /// the provider's documented limit (Brevo 10, Resend 5, others unlimited).
    pub max_requests_per_second: Option<u32>,
    /// Wake-ups the EmailSyncActor's mailbox holds; more are dropped and counted.
    pub mailbox_capacity: NonZeroUsize,
    /// How often due rows are looked for even without a wake-up.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claim belongs to one instance (at least `timeout` + 1 s).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Delivered rows are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    pub retry: RetrySettings,
    pub circuit_breaker: CircuitBreakerSettings,
    /// Used with `kind = "brevo"`.
    pub brevo: BrevoSettings,
    /// Used with `kind = "resend"`.
    pub resend: ResendSettings,
    /// Used with `kind = "mailchimp"`.
    pub mailchimp: MailchimpSettings,
    /// Used with `kind = "sendgrid"`.
    pub sendgrid: SendgridSettings,
    /// Used with `kind = "mailgun"`.
    pub mailgun: MailgunSettings,
}

impl EmailSyncSettings {
    /// The first key `kind` needs that is not set, with what to say about it: each provider's
    /// section knows its own required keys.
    pub(crate) fn missing(&self) -> Option<(String, &'static str)> {
        let (section, missing) = match self.kind {
            ProviderKind::Webhook => return None,
            ProviderKind::Brevo => ("brevo", self.brevo.missing()),
            ProviderKind::Resend => ("resend", self.resend.missing()),
            ProviderKind::Mailchimp => ("mailchimp", self.mailchimp.missing()),
            ProviderKind::Sendgrid => ("sendgrid", self.sendgrid.missing()),
            ProviderKind::Mailgun => ("mailgun", self.mailgun.missing()),
        };
        missing.map(|(key, message)| (format!("email_sync.{section}.{key}"), message))
    }

    /// Requests in flight at once: `max_in_flight`, or the kind's default.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .map_or_else(|| self.kind.default_in_flight(), NonZeroUsize::get)
    }

    /// Rows per request: `max_batch`, or the kind's batch limit.
    pub fn batch(&self) -> usize {
        self.max_batch
            .map_or_else(|| self.kind.batch_limit(), NonZeroUsize::get)
    }

    /// Requests a second at most (0 = unlimited): `max_requests_per_second`, or the kind's
    /// documented limit.
    pub(crate) fn requests_per_second(&self) -> u32 {
        self.max_requests_per_second
            .unwrap_or_else(|| self.kind.default_requests_per_second())
    }
}

impl Default for EmailSyncSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Webhook,
            url: Url::parse("http://127.0.0.1:8090/webhook")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            secret: None,
            timeout: Duration::from_secs(10),
            max_in_flight: None,
            max_batch: None,
            max_requests_per_second: None,
            mailbox_capacity: nonzero(1024),
            poll_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            retry: RetrySettings::default(),
            circuit_breaker: CircuitBreakerSettings::default(),
            brevo: BrevoSettings::default(),
            resend: ResendSettings::default(),
            mailchimp: MailchimpSettings::default(),
            sendgrid: SendgridSettings::default(),
            mailgun: MailgunSettings::default(),
        }
    }
}
