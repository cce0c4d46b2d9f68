//! `email_sync`: the provider kind, the email sync's own keys, and one section per provider
//! kind (SPEC §4.5, §5).

use super::*;

/// `email_sync.kind`: which provider's API deliveries speak (SPEC §5).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Standard Webhooks to `email_sync.url`.
    Webhook,
    /// Brevo's contacts API (`email_sync.brevo`).
    Brevo,
    /// Resend's contacts API (`email_sync.resend`).
    Resend,
    /// Mailchimp's list members API (`email_sync.mailchimp`).
    Mailchimp,
    /// SendGrid's marketing contacts API (`email_sync.sendgrid`).
    Sendgrid,
    /// Mailgun's mailing list members API (`email_sync.mailgun`).
    Mailgun,
}

impl ProviderKind {
    /// The most rows one request may carry: the API's batch limit (SPEC §5; SendGrid's own
    /// is 30 000 contacts / 6 MB, held to 1000 so a request stays far below the size limit),
    /// 1 where the API takes one contact per request.
    pub fn batch_limit(self) -> usize {
        match self {
            ProviderKind::Mailchimp => 500,
            ProviderKind::Sendgrid | ProviderKind::Mailgun => 1000,
            ProviderKind::Webhook | ProviderKind::Brevo | ProviderKind::Resend => 1,
        }
    }

    /// Requests in flight at once unless `email_sync.max_in_flight` says: Mailchimp allows 10
    /// concurrent connections per key (more are 429); the others document no such limit.
    pub fn default_in_flight(self) -> usize {
        match self {
            ProviderKind::Mailchimp => 10,
            _ => 16,
        }
    }

    /// `email_sync.max_requests_per_second` unless set: the provider's documented limit
    /// (Brevo 10/s on contacts, Resend 5/s per team), else unlimited (0).
    pub fn default_requests_per_second(self) -> u32 {
        match self {
            ProviderKind::Brevo => 10,
            ProviderKind::Resend => 5,
            _ => 0,
        }
    }
}

/// Mailchimp's `status_if_new`: what a new member becomes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusIfNew {
    /// Subscribed at once (the person consented on the sign-up form).
    Subscribed,
    /// Mailchimp sends a confirmation email first (double opt-in).
    Pending,
}

impl StatusIfNew {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusIfNew::Subscribed => "subscribed",
            StatusIfNew::Pending => "pending",
        }
    }
}

/// `email_sync.mailchimp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailchimpSettings {
    /// The API key, `<key>-<dc>`; required with `kind = "mailchimp"`.
    pub api_key: SecretString,
    /// The audience (list) id; required with `kind = "mailchimp"`.
    pub list_id: String,
    /// The API's base URL; unset: `https://<dc>.api.mailchimp.com` from the key's suffix.
    #[serde(deserialize_with = "http_url")]
    pub base_url: Option<Url>,
    /// The merge field (tag) that receives the username, e.g. `USERNAME`.
    pub username_merge_field: String,
    /// What a new member becomes: `pending` (double opt-in, the default) or `subscribed`.
    pub status_if_new: StatusIfNew,
    /// How an erased user leaves the audience: `permanent` (delete-permanent, the default: the
    /// address cannot be re-imported, and a later sign-up with it is refused by Mailchimp as
    /// "Forgotten Email Not Subscribed") or `archive` (DELETE: kept archived, may come back).
    pub erase: MailchimpErase,
}

/// `email_sync.mailchimp.erase`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MailchimpErase {
    /// `POST …/members/{hash}/actions/delete-permanent`.
    Permanent,
    /// `DELETE …/members/{hash}` (archive).
    Archive,
}

impl Default for MailchimpSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_id: String::new(),
            base_url: None,
            username_merge_field: "USERNAME".into(),
            status_if_new: StatusIfNew::Pending,
            erase: MailchimpErase::Permanent,
        }
    }
}

impl MailchimpSettings {
    /// `base_url`, or the data center's API host named by the key's suffix (`…-us21`).
    pub fn api_base(&self) -> Url {
        if let Some(url) = &self.base_url {
            return url.clone();
        }
        let dc = self
            .api_key
            .expose_secret()
            .rsplit_once('-')
            .map(|(_, dc)| dc.to_owned())
            .filter(|dc| !dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or_else(|| "us1".into());
        Url::parse(&format!("https://{dc}.api.mailchimp.com"))
            .unwrap_or_else(|_| unreachable!("an alphanumeric host label"))
    }
}

/// `email_sync.sendgrid`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendgridSettings {
    /// The API key (bearer); required with `kind = "sendgrid"`.
    pub api_key: SecretString,
    /// Lists every contact is added to (SendGrid list ids).
    pub list_ids: Vec<String>,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// The contact field that receives the username (`first_name`, or a custom field).
    pub username_field: String,
    /// How long after an upsert whose import job is unknown (its answer was lost) a contact
    /// that is not found may only be not imported yet: a deletion waits that long (SPEC §6).
    /// An upsert answered with its `job_id` is waited for by polling the job instead.
    #[serde(with = "humantime_serde")]
    pub import_window: Duration,
}

impl Default for SendgridSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_ids: Vec::new(),
            base_url: Url::parse("https://api.sendgrid.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            username_field: "first_name".into(),
            import_window: Duration::from_secs(30 * 60),
        }
    }
}

/// `email_sync.mailgun`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunSettings {
    /// The API key (Basic `api:<key>`); required with `kind = "mailgun"`.
    pub api_key: SecretString,
    /// The mailing list's address, e.g. `newsletter@mg.example.com`; required with
    /// `kind = "mailgun"`.
    pub list: String,
    /// The API's base URL (`https://api.eu.mailgun.net` in the EU); tests point it at a fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// How long after an upsert a 404 on deleting the member may only mean the list has not
    /// caught up (Mailgun's lists are eventually consistent): retried, not success (SPEC §6).
    #[serde(with = "humantime_serde")]
    pub import_window: Duration,
}

impl Default for MailgunSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list: String::new(),
            base_url: Url::parse("https://api.mailgun.net")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            import_window: Duration::from_secs(5 * 60),
        }
    }
}

/// `email_sync.brevo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrevoSettings {
    /// The API key (`api-key` header); required with `kind = "brevo"`.
    pub api_key: SecretString,
    /// Lists every contact is added to.
    pub list_ids: Vec<u64>,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// The contact attribute that receives the username (create it in Brevo first).
    pub username_attribute: String,
}

impl Default for BrevoSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_ids: Vec::new(),
            base_url: Url::parse("https://api.brevo.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            username_attribute: "USERNAME".into(),
        }
    }
}

/// `email_sync.resend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResendSettings {
    /// The API key (bearer); required with `kind = "resend"`.
    pub api_key: SecretString,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
}

impl Default for ResendSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            base_url: Url::parse("https://api.resend.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
        }
    }
}

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
    pub fn requests_per_second(&self) -> u32 {
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
