//! Settings: the compiled-in defaults, overlaid by a TOML file, overlaid by `SIGNUP_…`
//! environment variables (SPEC §4.5), merged by `figment` and parsed once into the types the
//! code uses (`SocketAddr`, `Url`, a decoded [`WebhookKey`], argon2 `Params`, `NonZero*`, a
//! parsed log filter). Nothing downstream re-parses a value or falls back to a default on an
//! error. Unknown keys and invalid values stop start-up with a message naming the key and where
//! it came from (the file, or the environment variable).
//!
//! This file is the index and the general sections; `email_sync` holds the email sync's
//! section and each provider kind's; `load` reads, merges and validates.

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
pub use crate::email::provider::{
    BrevoSettings, MailchimpErase, MailchimpSettings, MailgunSettings, ProviderKind,
    ResendSettings, SendgridSettings, StatusIfNew,
};
pub use crate::email::retry::RetrySettings;
use crate::email::webhook::WebhookKey;
use crate::settings_de::{http_url, list_or_commas, required_http_url};

/// The repository's `config.toml`. It documents every key with its default; a unit test keeps
/// it equal to [`Settings::default`].
#[cfg(test)]
pub(crate) const DOCUMENTED_DEFAULTS: &str = include_str!("../../config.toml");

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
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
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
    /// More than one of the above, each on a line of its own.
    #[error("{} configuration errors:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// `errors` as one error: the only one, or all of them (at least one is expected).
    pub(crate) fn all(mut errors: Vec<ConfigError>) -> Self {
        match errors.len() {
            1 => errors.remove(0),
            _ => ConfigError::Several(errors),
        }
    }
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
    pub telemetry: TelemetrySettings,
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
pub(crate) const HASH_OUTPUT_LEN: usize = 32;

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
    pub(crate) fn max_waiting(&self) -> usize {
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

mod email_sync;
mod load;

pub use email_sync::*;

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

/// Traces (SPEC §9): off unless an endpoint is set; nothing is sent anywhere otherwise.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector (`http://127.0.0.1:4318`): spans are exported there as OTLP JSON
    /// to `<endpoint>/v1/traces`. Unset: no span leaves the process.
    #[serde(deserialize_with = "http_url")]
    pub otlp_endpoint: Option<Url>,
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
    pub(crate) fn env_filter(&self) -> tracing_subscriber::EnvFilter {
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

#[cfg(test)]
mod tests;
