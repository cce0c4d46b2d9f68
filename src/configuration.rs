//! Settings: the compiled-in defaults, overlaid by a TOML file, overlaid by `SIGNUP_…`
//! environment variables (SPEC §4.5), merged by `figment` and parsed once into the types the
//! code uses (`SocketAddr`, `Url`, a decoded [`WebhookKey`], argon2 `Params`, `NonZero*`, a
//! parsed log filter). Nothing downstream re-parses a value or falls back to a default on an
//! error. Unknown keys and invalid values stop start-up with a message naming the key and where
//! it came from (the file, or the environment variable).

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing_subscriber::filter::Directive;

pub use crate::email::circuit_breaker::CircuitBreakerSettings;
pub use crate::email::retry::RetrySettings;
use crate::email::webhook::WebhookKey;

/// The repository's `config.toml`. It documents every key with its default; a unit test keeps
/// it equal to [`Settings::default`].
pub const DOCUMENTED_DEFAULTS: &str = include_str!("../config.toml");

/// Prefix of environment overrides: `SIGNUP_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "SIGNUP_";

/// Shortest admin token accepted: an empty or guessable token would open the admin API (and
/// every email address in the outbox) to anyone.
const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// A trusted reverse proxy: one address (`10.0.0.1`) or a CIDR range (`10.0.0.0/8`).
/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) match their IPv4 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub ipnet::IpNet);

impl TrustedProxy {
    /// Whether `ip` (mapped addresses in their IPv4 form) is this proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let net = match s.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) => s
                .parse::<IpAddr>()
                .map(|ip| ipnet::IpNet::from(ip.to_canonical()))
                .map_err(|_| format!("`{s}` is neither an address nor a CIDR range"))?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 range 10.0.0.0/8.
        let net = match net {
            ipnet::IpNet::V6(v6) => match (v6.addr().to_ipv4_mapped(), v6.prefix_len()) {
                (Some(v4), len) if len >= 96 => ipnet::Ipv4Net::new(v4, len - 96)
                    .map(ipnet::IpNet::V4)
                    .map_err(|e| e.to_string())?,
                _ => net,
            },
            v4 => v4,
        };
        Ok(Self(net.trunc()))
    }
}

impl<'de> Deserialize<'de> for TrustedProxy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration key `{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub password: PasswordSettings,
    pub registration: RegistrationSettings,
    pub rate_limit: RateLimitSettings,
    pub email_sync: EmailSyncSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address and port to listen on; port 0 picks a free one (tests).
    pub bind: SocketAddr,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body; larger is 413.
    pub max_body_bytes: NonZeroUsize,
    /// Peers whose `X-Forwarded-For` is believed: addresses or CIDR ranges.
    #[serde(deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Where people reach the server, e.g. `https://signup.example.com`. When it is https the
    /// form's cookies are `__Host-` prefixed and `Secure`; never decided by a request header.
    #[serde(deserialize_with = "http_url")]
    pub public_url: Option<Url>,
    /// Longest a client may take to send a request's headers, and again its body: slow clients
    /// (slowloris) are cut off with 408 instead of holding a connection.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://file.db`, `sqlite:///abs/path.db` or `postgres://…`. May hold a password.
    pub url: SecretString,
    /// Pool size of the request path.
    pub max_connections: NonZeroU32,
    /// How long a request waits for a connection before answering 503.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// `password`: the argon2id cost, checked and built into `argon2::Params` when read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, try_from = "PasswordFields")]
pub struct PasswordSettings {
    /// argon2id parameters (memory in KiB, iterations, parallelism; 32-byte output).
    pub params: argon2::Params,
    /// Most requests waiting for a hashing thread; more are answered 503 at once (overload is
    /// shed, not queued). 0 means 64 per core.
    pub max_waiting: usize,
}

/// `password` as written in the file.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PasswordFields {
    argon2_m_kib: u32,
    argon2_t: u32,
    argon2_p: u32,
    max_waiting: usize,
}

impl Default for PasswordFields {
    /// OWASP's argon2id recommendation (m = 19 MiB, t = 2, p = 1).
    fn default() -> Self {
        Self {
            argon2_m_kib: 19_456,
            argon2_t: 2,
            argon2_p: 1,
            max_waiting: 0,
        }
    }
}

/// Length of the stored hash.
pub const HASH_OUTPUT_LEN: usize = 32;

impl TryFrom<PasswordFields> for PasswordSettings {
    type Error = String;

    fn try_from(f: PasswordFields) -> Result<Self, String> {
        let params = argon2::Params::new(
            f.argon2_m_kib,
            f.argon2_t,
            f.argon2_p,
            Some(HASH_OUTPUT_LEN),
        )
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        Ok(Self {
            params,
            max_waiting: f.max_waiting,
        })
    }
}

impl Default for PasswordSettings {
    fn default() -> Self {
        Self::new(19_456, 2, 1).unwrap_or_else(|_| unreachable!("OWASP's parameters are valid"))
    }
}

impl PasswordSettings {
    /// argon2id with memory `m_kib`, `t` iterations and parallelism `p`; `max_waiting` 0.
    pub fn new(m_kib: u32, t: u32, p: u32) -> Result<Self, String> {
        Self::try_from(PasswordFields {
            argon2_m_kib: m_kib,
            argon2_t: t,
            argon2_p: p,
            max_waiting: 0,
        })
    }

    /// `max_waiting`, with 0 resolved to 64 per core.
    pub fn max_waiting(&self) -> usize {
        match self.max_waiting {
            0 => 64 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationSettings {
    /// Most registrations the RegistrationActor commits in one transaction.
    pub max_batch: NonZeroUsize,
    /// Longest a registration is waited for: past it the answer is 503 with `Retry-After`, and
    /// on PostgreSQL a statement is cancelled (`statement_timeout`, `lock_timeout`).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Registrations per minute per client address; 0 turns rate limiting off.
    pub per_minute: u32,
    /// Registrations a client may make at once before the per-minute rate applies.
    pub burst: u32,
}

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token of the admin API; the admin routes are 404 while it is unset.
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter (`info`, `signup=debug,sqlx=warn`); `RUST_LOG` wins when set.
    pub level: LogFilter,
    pub format: LogFormat,
}

/// A `tracing` filter, parsed when read: its directives, and the text they came from.
#[derive(Debug, Clone)]
pub struct LogFilter {
    text: String,
    directives: Vec<Directive>,
}

impl LogFilter {
    /// The filter to install.
    pub fn env_filter(&self) -> tracing_subscriber::EnvFilter {
        self.directives
            .iter()
            .cloned()
            .fold(tracing_subscriber::EnvFilter::default(), |f, d| {
                f.add_directive(d)
            })
    }
}

impl PartialEq for LogFilter {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::str::FromStr for LogFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let directives = text
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.parse::<Directive>().map_err(|e| {
                    format!("`{d}` is not a filter directive ({e}); e.g. info or signup=debug")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            directives,
        })
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A list written as a TOML array or, friendlier in an environment variable, `a, b`.
fn list_or_commas<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        List(Vec<String>),
        Text(String),
    }
    let items: Vec<String> = match Written::deserialize(deserializer)? {
        Written::List(items) => items,
        Written::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|item| item.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// An optional http(s) URL.
fn http_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => parse_http_url(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A required http(s) URL.
fn required_http_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    parse_http_url(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        _ => Err(format!(
            "expected an http(s) URL, e.g. https://signup.example.com, not `{text}`"
        )),
    }
}

/// A constant that is not zero (checked at compile time by the callers' literals).
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_body_bytes: nonzero(16 * 1024),
            trusted_proxies: Vec::new(),
            public_url: None,
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://signup.db"),
            max_connections: NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN),
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for RegistrationSettings {
    fn default() -> Self {
        Self {
            max_batch: nonzero(64),
            deadline: Duration::from_secs(5),
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_minute: 20,
            burst: 10,
        }
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

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid filter")),
            format: LogFormat::Text,
        }
    }
}

impl Settings {
    /// Loads the settings the way `signup` does: `file` if given (it must exist), else
    /// `./config.toml` if present, else the defaults; then the `SIGNUP_…` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, path) = match file {
            Some(path) => (read(path)?, path.display().to_string()),
            None if Path::new("config.toml").exists() => {
                (read(Path::new("config.toml"))?, "config.toml".to_string())
            }
            None => (String::new(), "(defaults)".to_string()),
        };
        Self::from_sources(&text, &path, env)
    }

    /// Merges `text` (TOML, named `path` in messages) and the environment overrides, and parses
    /// the result.
    pub fn from_sources(
        text: &str,
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(text));
        // Which variable set which key, to name it in an error.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            if key.split('.').any(str::is_empty) {
                return Err(ConfigError::Invalid {
                    key,
                    origin: format!(" (environment variable {name})"),
                    message: "malformed name; expected SIGNUP_<SECTION>__<KEY>".into(),
                });
            }
            // Typed as figment types environment values: `8` a number, `true` a boolean,
            // `[a, b]` a list, anything else a string; the key's type then decides.
            let value: figment::value::Value = value.parse().unwrap_or_else(|e| match e {});
            figment = figment.merge(Serialized::global(&key, value));
            from_env.push((key, name));
        }
        let settings: Settings = figment.extract().map_err(|e| invalid(e, path, &from_env))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what a single value's type cannot: relations between keys, and minimums.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                origin: String::new(),
                message: message.to_string(),
            })
        };
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return fail("database.url", "expected sqlite://… or postgres://…");
        }
        let retry = &self.email_sync.retry;
        if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
            return fail(
                "email_sync.retry.multiplier",
                "must be a number of at least 1",
            );
        }
        if !(0.0..=1.0).contains(&retry.randomization) {
            return fail("email_sync.retry.randomization", "must be between 0 and 1");
        }
        let must_be_positive = [
            ("server.request_timeout", self.server.request_timeout),
            ("database.acquire_timeout", self.database.acquire_timeout),
            ("registration.deadline", self.registration.deadline),
            ("email_sync.timeout", self.email_sync.timeout),
            ("email_sync.poll_interval", self.email_sync.poll_interval),
            ("email_sync.lease", self.email_sync.lease),
            ("email_sync.retention", self.email_sync.retention),
            ("email_sync.retry.initial_interval", retry.initial_interval),
            ("email_sync.retry.max_interval", retry.max_interval),
            ("email_sync.retry.max_elapsed", retry.max_elapsed),
            (
                "email_sync.circuit_breaker.open_for",
                self.email_sync.circuit_breaker.open_for,
            ),
            (
                "email_sync.circuit_breaker.max_open_for",
                self.email_sync.circuit_breaker.max_open_for,
            ),
        ];
        for (key, value) in must_be_positive {
            if value.is_zero() {
                return fail(key, "must be longer than 0");
            }
        }
        let breaker = &self.email_sync.circuit_breaker;
        if breaker.max_open_for < breaker.open_for {
            return fail(
                "email_sync.circuit_breaker.max_open_for",
                "must be at least email_sync.circuit_breaker.open_for",
            );
        }
        // A lease that ends while its delivery may still be running lets another claim (this
        // instance's next poll, or another instance) send the same row again.
        // The same rule the delivery core applies to each claimed row (`delivery::may_send`),
        // so that every lease accepted here delivers.
        if !crate::delivery::lease_accepted(self.email_sync.lease, self.email_sync.timeout) {
            return fail(
                "email_sync.lease",
                "must exceed email_sync.timeout by at least 1s",
            );
        }
        let key_needed = match self.email_sync.kind {
            ProviderKind::Webhook => None,
            ProviderKind::Brevo => {
                Some(("email_sync.brevo.api_key", &self.email_sync.brevo.api_key))
            }
            ProviderKind::Resend => {
                Some(("email_sync.resend.api_key", &self.email_sync.resend.api_key))
            }
            ProviderKind::Mailchimp => Some((
                "email_sync.mailchimp.api_key",
                &self.email_sync.mailchimp.api_key,
            )),
            ProviderKind::Sendgrid => Some((
                "email_sync.sendgrid.api_key",
                &self.email_sync.sendgrid.api_key,
            )),
            ProviderKind::Mailgun => Some((
                "email_sync.mailgun.api_key",
                &self.email_sync.mailgun.api_key,
            )),
        };
        if let Some((key, value)) = key_needed
            && value.expose_secret().is_empty()
        {
            return fail(
                key,
                "is required by email_sync.kind; best given in the environment",
            );
        }
        let sync = &self.email_sync;
        let list_needed = match sync.kind {
            ProviderKind::Mailchimp => {
                Some(("email_sync.mailchimp.list_id", &sync.mailchimp.list_id))
            }
            ProviderKind::Mailgun => Some(("email_sync.mailgun.list", &sync.mailgun.list)),
            _ => None,
        };
        if let Some((key, value)) = list_needed
            && value.trim().is_empty()
        {
            return fail(key, "is required by email_sync.kind");
        }
        if let Some(batch) = sync.max_batch
            && batch.get() > sync.kind.batch_limit()
        {
            let message = match sync.kind.batch_limit() {
                1 => "must be 1 (or unset) for this email_sync.kind: its API takes one contact per request".to_string(),
                limit => format!("must be at most {limit}, this email_sync.kind's batch limit"),
            };
            return fail("email_sync.max_batch", &message);
        }
        if let Some(token) = &self.admin.token
            && token.expose_secret().chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            return fail(
                "admin.token",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`); unset it to turn the admin API off",
            );
        }
        Ok(())
    }

    /// Worker threads to start: the configured number, or one per core.
    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// figment's error as a [`ConfigError`] naming the key, and the environment variable that set it
/// or else the file.
fn invalid(error: figment::Error, path: &str, from_env: &[(String, String)]) -> ConfigError {
    // The first error is reported; one at a time is enough to fix a file.
    let error = error
        .into_iter()
        .next()
        .unwrap_or_else(|| figment::Error::from("unknown error".to_string()));
    let mut segments = error.path.clone();
    let message = match &error.kind {
        figment::error::Kind::UnknownField(field, _) => {
            if segments.last() != Some(field) {
                segments.push(field.clone());
            }
            format!("unknown key `{field}`")
        }
        kind => kind.to_string(),
    };
    let key = segments.join(".");
    // The variable that set this key, or one that set a key inside it (`password` is checked
    // as a whole, from `SIGNUP_PASSWORD__ARGON2_M_KIB`, say).
    let inside = format!("{key}.");
    let origin = from_env
        .iter()
        .find(|(k, _)| *k == key)
        .or_else(|| from_env.iter().find(|(k, _)| k.starts_with(&inside)))
        .map(|(_, var)| format!(" (environment variable {var})"))
        .unwrap_or_else(|| format!(" (in {path})"));
    ConfigError::Invalid {
        key,
        origin,
        message,
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_documented_config_toml_equals_the_compiled_defaults() {
        let documented = Settings::from_sources(DOCUMENTED_DEFAULTS, "config.toml", [])
            .expect("config.toml parses");
        let defaults = Settings::default();
        assert_eq!(documented.server, defaults.server);
        assert_eq!(
            documented.database.url.expose_secret(),
            defaults.database.url.expose_secret()
        );
        assert_eq!(
            documented.database.max_connections,
            defaults.database.max_connections
        );
        assert_eq!(
            documented.database.acquire_timeout,
            defaults.database.acquire_timeout
        );
        assert_eq!(documented.password, defaults.password);
        assert_eq!(documented.registration, defaults.registration);
        assert_eq!(documented.rate_limit, defaults.rate_limit);
        assert_eq!(documented.email_sync.url, defaults.email_sync.url);
        assert_eq!(documented.email_sync.timeout, defaults.email_sync.timeout);
        assert_eq!(
            documented.email_sync.max_in_flight,
            defaults.email_sync.max_in_flight
        );
        assert_eq!(
            documented.email_sync.mailbox_capacity,
            defaults.email_sync.mailbox_capacity
        );
        assert_eq!(
            documented.email_sync.poll_interval,
            defaults.email_sync.poll_interval
        );
        assert_eq!(documented.email_sync.lease, defaults.email_sync.lease);
        assert_eq!(
            documented.email_sync.retention,
            defaults.email_sync.retention
        );
        assert_eq!(documented.email_sync.retry, defaults.email_sync.retry);
        assert_eq!(
            documented.email_sync.circuit_breaker,
            defaults.email_sync.circuit_breaker
        );
        assert!(documented.email_sync.secret.is_none());
        assert!(documented.admin.token.is_none());
        assert_eq!(documented.log, defaults.log);
    }

    #[test]
    fn environment_variables_override_nested_keys_with_the_right_types() {
        let settings = Settings::from_sources(
            "",
            "test",
            env(&[
                ("SIGNUP_DATABASE__URL", "postgres://u:p@localhost/db"),
                ("SIGNUP_EMAIL_SYNC__RETRY__MAX_ATTEMPTS", "7"),
                ("SIGNUP_EMAIL_SYNC__RETRY__MULTIPLIER", "3"),
                ("SIGNUP_EMAIL_SYNC__TIMEOUT", "250ms"),
                ("SIGNUP_ADMIN__TOKEN", "0123456789abcdef0123456789abcdef"),
                ("SIGNUP_SERVER__TRUSTED_PROXIES", "10.0.0.1, 10.0.0.2"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .expect("valid overrides");
        assert_eq!(
            settings.database.url.expose_secret(),
            "postgres://u:p@localhost/db"
        );
        assert_eq!(settings.email_sync.retry.max_attempts, 7);
        assert_eq!(settings.email_sync.retry.multiplier, 3.0);
        assert_eq!(settings.email_sync.timeout, Duration::from_millis(250));
        assert_eq!(
            settings.admin.token.as_ref().map(|t| t.expose_secret()),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(settings.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn an_error_from_an_environment_variable_names_the_variable_not_the_file() {
        let err = Settings::from_sources(
            "[server]\nworkers = 2\n",
            "(defaults)",
            env(&[("SIGNUP_SERVER__WORKERS", "many")]),
        )
        .expect_err("not a number")
        .to_string();
        assert!(
            err.contains("environment variable SIGNUP_SERVER__WORKERS"),
            "{err}"
        );
        assert!(!err.contains("(defaults)"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges_and_mapped_peers_match_their_ipv4_form() {
        let proxies: Vec<TrustedProxy> = [
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::ffff:172.16.0.0/108",
        ]
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect();
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().expect("an address");
            proxies.iter().any(|p| p.contains(ip))
        };
        // (peer, trusted?, why)
        let cases = [
            ("10.1.2.3", true, "inside a range"),
            ("::ffff:10.1.2.3", true, "an IPv4-mapped peer (bind = [::])"),
            ("192.0.2.7", true, "a single address"),
            ("::ffff:192.0.2.7", true, "a single address, mapped"),
            ("192.0.2.8", false, "next to a single address"),
            ("2001:db8:1::1", true, "an IPv6 range"),
            ("172.16.5.5", true, "a mapped range is its IPv4 range"),
            ("11.0.0.1", false, "outside every range"),
        ];
        for (ip, expected, why) in cases {
            assert_eq!(trusted(ip), expected, "{ip}: {why}");
        }
    }

    #[test]
    fn unset_pacing_and_batch_sizes_follow_the_providers_documented_limits() {
        let mut sync = EmailSyncSettings::default();
        // (kind, requests in flight, rows per request, requests a second; 0 = unlimited)
        let cases = [
            (ProviderKind::Webhook, 16, 1, 0),
            (ProviderKind::Mailchimp, 10, 500, 0),
            (ProviderKind::Sendgrid, 16, 1000, 0),
            (ProviderKind::Mailgun, 16, 1000, 0),
            (ProviderKind::Brevo, 16, 1, 10),
            (ProviderKind::Resend, 16, 1, 5),
        ];
        for (kind, in_flight, batch, per_second) in cases {
            sync.kind = kind;
            assert_eq!(
                (sync.in_flight(), sync.batch(), sync.requests_per_second()),
                (in_flight, batch, per_second),
                "{kind:?}"
            );
        }
        sync.max_in_flight = NonZeroUsize::new(3);
        sync.max_batch = NonZeroUsize::new(50);
        sync.max_requests_per_second = Some(0);
        assert_eq!(
            (sync.in_flight(), sync.batch(), sync.requests_per_second()),
            (3, 50, 0),
            "what is set wins"
        );
    }

    #[test]
    fn bad_configuration_is_rejected_naming_the_key() {
        // (file, environment, the key the message must name, what the case shows)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                "[server]\nbindd = \"x\"\n",
                &[],
                "server.bindd",
                "unknown key in the file",
            ),
            ("[nope]\n", &[], "nope", "unknown section in the file"),
            (
                "",
                &[("SIGNUP_SERVER__NOPE", "1")],
                "SIGNUP_SERVER__NOPE",
                "unknown key in the environment",
            ),
            (
                "",
                &[("SIGNUP_DATABASE_URL", "x")],
                "SIGNUP_DATABASE_URL",
                "single underscore is not silently ignored",
            ),
            (
                "[server]\nworkers = \"many\"\n",
                &[],
                "server.workers",
                "wrong type",
            ),
            (
                "",
                &[("SIGNUP_SERVER__WORKERS", "many")],
                "server.workers",
                "wrong type from the environment",
            ),
            (
                "[email_sync]\ntimeout = \"soon\"\n",
                &[],
                "email_sync.timeout",
                "bad duration",
            ),
            (
                "[log]\nformat = \"xml\"\n",
                &[],
                "log.format",
                "bad enum value",
            ),
            (
                "[server]\nbind = \"nowhere\"\n",
                &[],
                "server.bind",
                "bad address",
            ),
            (
                "[email_sync.retry]\nrandomization = 2.0\n",
                &[],
                "email_sync.retry.randomization",
                "out of range",
            ),
            (
                "[database]\nurl = \"mysql://x\"\n",
                &[],
                "database.url",
                "unsupported database",
            ),
            (
                "",
                &[("SIGNUP_ADMIN__TOKEN", "")],
                "admin.token",
                "an empty admin token would let anyone in",
            ),
            (
                "[admin]\ntoken = \"short-token\"\n",
                &[],
                "admin.token",
                "a short admin token",
            ),
            (
                "[email_sync]\npoll_interval = \"0s\"\n",
                &[],
                "email_sync.poll_interval",
                "a zero poll interval spins a core",
            ),
            (
                "[registration]\ndeadline = \"0s\"\n",
                &[],
                "registration.deadline",
                "a zero deadline",
            ),
            (
                "[email_sync]\ntimeout = \"10s\"\nlease = \"10s\"\n",
                &[],
                "email_sync.lease",
                "a lease no longer than the timeout allows duplicate deliveries",
            ),
            (
                "[email_sync]\nkind = \"brevo\"\nmax_batch = 2\n[email_sync.brevo]\napi_key = \"k\"\n",
                &[],
                "email_sync.max_batch",
                "a batch for an API that takes one contact per request",
            ),
            (
                "[email_sync]\nkind = \"mailchimp\"\nmax_batch = 501\n[email_sync.mailchimp]\napi_key = \"k-us1\"\nlist_id = \"l\"\n",
                &[],
                "email_sync.max_batch",
                "a batch over Mailchimp's 500 members",
            ),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                &[],
                "server.trusted_proxies",
                "a bad CIDR range",
            ),
            (
                "[server]\npublic_url = \"signup.example.com\"\n",
                &[],
                "server.public_url",
                "a public URL without a scheme",
            ),
            (
                "",
                &[("SIGNUP_EMAIL_SYNC__SECRET", "whsec_not base64!")],
                "SIGNUP_EMAIL_SYNC__SECRET",
                "a secret that does not decode is refused, never an empty key",
            ),
            (
                "[log]\nlevel = \"signup=loud\"\n",
                &[],
                "log.level",
                "a log filter that does not parse is refused, never replaced by info",
            ),
            (
                "[password]\nargon2_m_kib = 1\n",
                &[],
                "password",
                "argon2 parameters are checked once, when read",
            ),
            (
                "[registration]\nmax_batch = 0\n",
                &[],
                "registration.max_batch",
                "a zero batch is refused, not clamped",
            ),
            (
                "[email_sync.circuit_breaker]\nfailure_threshold = 0\n",
                &[],
                "email_sync.circuit_breaker.failure_threshold",
                "a zero threshold is refused, not clamped",
            ),
        ];
        for (file, vars, expected, why) in cases {
            let err = Settings::from_sources(file, "test.toml", env(vars))
                .expect_err(why)
                .to_string();
            assert!(
                err.contains(expected),
                "{why}: `{err}` should name `{expected}`"
            );
        }
    }
}
