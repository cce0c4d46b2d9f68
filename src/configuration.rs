//! Settings: the compiled-in defaults, overlaid by a TOML file, overlaid by `SIGNUP_…`
//! environment variables (SPEC §4.5). Unknown keys and invalid values stop start-up with a
//! message naming the key.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The repository's `config.toml`. It documents every key with its default; it is also the type
/// template for environment overrides (a variable for an integer key is parsed as an integer),
/// and a unit test keeps it equal to [`Settings::default`].
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
    #[error("configuration file {path} is not valid TOML: {source}")]
    Syntax {
        path: String,
        source: Box<toml::de::Error>,
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
    pub bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed: addresses or CIDR ranges.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Where people reach the server, e.g. `https://signup.example.com`. When it is https the
    /// form's cookies are `__Host-` prefixed and `Secure`; never decided by a request header.
    pub public_url: Option<String>,
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
    /// Pool size.
    pub max_connections: u32,
    /// How long a request waits for a connection before answering 503.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordSettings {
    pub argon2_m_kib: u32,
    pub argon2_t: u32,
    pub argon2_p: u32,
    /// Most requests waiting for a hashing thread; more are answered 503 at once (overload is
    /// shed, not queued). 0 means 64 per core.
    pub max_waiting: usize,
}

impl PasswordSettings {
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
    pub max_batch: usize,
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
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Webhook,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSyncSettings {
    pub kind: ProviderKind,
    pub url: String,
    /// `whsec_<base64>`; best given as `SIGNUP_EMAIL_SYNC__SECRET`.
    pub secret: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub mailbox_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    pub retry: RetrySettings,
    pub circuit_breaker: CircuitBreakerSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    pub multiplier: f64,
    pub randomization: f64,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
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
    pub level: String,
    pub format: LogFormat,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            max_body_bytes: 16 * 1024,
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
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for PasswordSettings {
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

impl Default for RegistrationSettings {
    fn default() -> Self {
        Self {
            max_batch: 64,
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
            url: "http://127.0.0.1:8090/webhook".into(),
            secret: None,
            timeout: Duration::from_secs(10),
            max_in_flight: 16,
            mailbox_capacity: 1024,
            poll_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            retry: RetrySettings::default(),
            circuit_breaker: CircuitBreakerSettings::default(),
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(5),
            multiplier: 2.0,
            randomization: 0.5,
            max_interval: Duration::from_secs(3600),
            max_attempts: 30,
            max_elapsed: Duration::from_secs(72 * 3600),
        }
    }
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(600),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
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

    /// Parses `text` (TOML, named `path` in messages) and applies the environment overrides.
    pub fn from_sources(
        text: &str,
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            source: Box::new(e),
        })?;
        let template: toml::Table = toml::from_str(DOCUMENTED_DEFAULTS).unwrap_or_default();

        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let key = segments.join(".");
            if segments.iter().any(String::is_empty) {
                return Err(ConfigError::Invalid {
                    key,
                    origin: format!(" (environment variable {name})"),
                    message: "malformed name; expected SIGNUP_<SECTION>__<KEY>".into(),
                });
            }
            set_path(&mut tree, &template, &segments, &value).map_err(|message| {
                ConfigError::Invalid {
                    key: key.clone(),
                    origin: format!(" (environment variable {name})"),
                    message,
                }
            })?;
            from_env.push((key, name));
        }

        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| {
                let key = e.path().to_string();
                // toml appends "in `section`" on further lines; the key already says where.
                let inner = e.into_inner().to_string();
                let inner = inner.lines().next().unwrap_or_default().to_string();
                // An unknown top-level key is reported at the root (".").
                let key = match unknown_field(&inner) {
                    Some(field) if key == "." => field.to_string(),
                    _ => key,
                };
                let origin = from_env
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, var)| format!(" (environment variable {var})"))
                    .unwrap_or_else(|| format!(" (in {path})"));
                ConfigError::Invalid {
                    key,
                    origin,
                    message: inner,
                }
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let retry = &self.email_sync.retry;
        let fail = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                origin: String::new(),
                message: message.to_string(),
            })
        };
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return fail(
                "server.bind",
                "expected an address and port, e.g. 127.0.0.1:8080",
            );
        }
        if self.server.max_body_bytes == 0 {
            return fail("server.max_body_bytes", "must be at least 1");
        }
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return fail("database.url", "expected sqlite://… or postgres://…");
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections", "must be at least 1");
        }
        if let Err(e) = argon2::Params::new(
            self.password.argon2_m_kib,
            self.password.argon2_t,
            self.password.argon2_p,
            None,
        ) {
            return fail("password", &format!("invalid argon2 parameters: {e}"));
        }
        if self.registration.max_batch == 0 {
            return fail("registration.max_batch", "must be at least 1");
        }
        if reqwest::Url::parse(&self.email_sync.url).is_err() {
            return fail(
                "email_sync.url",
                "expected a URL, e.g. https://provider.example/webhook",
            );
        }
        if let Some(secret) = &self.email_sync.secret
            && crate::email::webhook::decode_secret(secret.expose_secret()).is_err()
        {
            return fail("email_sync.secret", "expected whsec_<base64>");
        }
        if self.email_sync.max_in_flight == 0 {
            return fail("email_sync.max_in_flight", "must be at least 1");
        }
        if self.email_sync.mailbox_capacity == 0 {
            return fail("email_sync.mailbox_capacity", "must be at least 1");
        }
        if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
            return fail(
                "email_sync.retry.multiplier",
                "must be a number of at least 1",
            );
        }
        if !(0.0..=1.0).contains(&retry.randomization) {
            return fail("email_sync.retry.randomization", "must be between 0 and 1");
        }
        if self.email_sync.circuit_breaker.failure_threshold == 0 {
            return fail(
                "email_sync.circuit_breaker.failure_threshold",
                "must be at least 1",
            );
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
        // A lease that ends while its delivery may still be running lets another claim (this
        // instance's next poll, or another instance) send the same row again.
        if self.email_sync.lease < self.email_sync.timeout + Duration::from_secs(1) {
            return fail(
                "email_sync.lease",
                "must exceed email_sync.timeout by at least 1s",
            );
        }
        if let Some(url) = &self.server.public_url
            && !matches!(reqwest::Url::parse(url), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            return fail(
                "server.public_url",
                "expected an http(s) URL, e.g. https://signup.example.com",
            );
        }
        if let Some(token) = &self.admin.token
            && token.expose_secret().chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            return fail(
                "admin.token",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`); unset it to turn the admin API off",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail("log.level", "not a valid filter, e.g. info or signup=debug");
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

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Extracts `x` from serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

/// Stores `raw` at `segments` in `tree`, typed like the documented default at that place.
fn set_path(
    tree: &mut toml::Table,
    template: &toml::Table,
    segments: &[String],
    raw: &str,
) -> Result<(), String> {
    let (last, parents) = segments.split_last().ok_or("empty key")?;
    let mut table = tree;
    let mut hint = Some(template);
    for segment in parents {
        hint = hint
            .and_then(|t| t.get(segment))
            .and_then(toml::Value::as_table);
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{segment}` is a value, not a section"))?;
    }
    let value = typed_like(hint.and_then(|t| t.get(last)), raw);
    table.insert(last.clone(), value);
    Ok(())
}

/// Parses an environment value as the type of the documented default, so that `"8"` becomes an
/// integer for an integer key but stays a string for a string key (a numeric token, say).
/// A value that does not parse stays a string and the deserializer names the key.
fn typed_like(template: Option<&toml::Value>, raw: &str) -> toml::Value {
    let text = || toml::Value::String(raw.to_string());
    match template {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse()
            .map_or_else(|_| text(), toml::Value::Integer),
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse()
            .map_or_else(|_| text(), toml::Value::Float),
        Some(toml::Value::Boolean(_)) => raw
            .trim()
            .parse()
            .map_or_else(|_| text(), toml::Value::Boolean),
        Some(toml::Value::Array(_)) => {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                return toml::Value::Array(Vec::new());
            }
            toml::from_str::<toml::Table>(&format!("v = {trimmed}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| {
                    // Also accept the friendlier `10.0.0.1, 10.0.0.2`.
                    toml::Value::Array(
                        trimmed
                            .split(',')
                            .map(|s| toml::Value::String(s.trim().to_string()))
                            .collect(),
                    )
                })
        }
        _ => text(),
    }
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
