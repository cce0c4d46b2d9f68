//! Reading the settings: defaults, the file, `SIGNUP_…` variables, merged by `figment`, then
//! validated; an error names the key and where it came from.

use super::*;

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
            // The delivery simulation's knobs (`SIGNUP_SIM_SEED`, `…_SCHEDULES`, `…_BASE`) are
            // read by `cargo test`, not by the server: no configuration key.
            if rest.starts_with(SIM_PREFIX) {
                continue;
            }
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
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::all(invalid(e, path, &from_env)))?;
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(ConfigError::all(problems));
        }
        Ok(settings)
    }

    /// What a single value's type cannot check: relations between keys, and minimums. Every
    /// problem, each naming its key (`signup check` lists them all).
    fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut fail = |key: &str, message: &str| {
            problems.push(ConfigError::Invalid {
                key: key.to_string(),
                origin: String::new(),
                message: message.to_string(),
            });
        };
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            fail("database.url", "expected sqlite://… or postgres://…");
        }
        let retry = &self.email_sync.retry;
        if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
            fail(
                "email_sync.retry.multiplier",
                "must be a number of at least 1",
            );
        }
        if !(0.0..=1.0).contains(&retry.randomization) {
            fail("email_sync.retry.randomization", "must be between 0 and 1");
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
                fail(key, "must be longer than 0");
            }
        }
        let breaker = &self.email_sync.circuit_breaker;
        if breaker.max_open_for < breaker.open_for {
            fail(
                "email_sync.circuit_breaker.max_open_for",
                "must be at least email_sync.circuit_breaker.open_for",
            );
        }
        // A lease that ends while its delivery may still be running lets another claim (this
        // instance's next poll, or another instance) send the same row again.
        // The same rule the delivery core applies to each claimed row (`delivery::may_send`),
        // so that every lease accepted here delivers.
        if !crate::delivery::lease_accepted(self.email_sync.lease, self.email_sync.timeout) {
            fail(
                "email_sync.lease",
                "must exceed email_sync.timeout by at least 1s",
            );
        }
        let sync = &self.email_sync;
        if let Some((key, message)) = sync.missing() {
            fail(&key, message);
        }
        if let Some(batch) = sync.max_batch
            && batch.get() > sync.kind.batch_limit()
        {
            let message = match sync.kind.batch_limit() {
                1 => "must be 1 (or unset) for this email_sync.kind: its API takes one contact per request".to_string(),
                limit => format!("must be at most {limit}, this email_sync.kind's batch limit"),
            };
            fail("email_sync.max_batch", &message);
        }
        if let Some(token) = &self.admin.token
            && token.expose_secret().chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            fail(
                "admin.token",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`); unset it to turn the admin API off",
            );
        }
        problems
    }

    /// Worker threads to start: the configured number, or one per core.
    pub(crate) fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// figment's errors as [`ConfigError`]s, each naming the key, and the environment variable that
/// set it or else the file.
fn invalid(error: figment::Error, path: &str, from_env: &[(String, String)]) -> Vec<ConfigError> {
    error
        .into_iter()
        .map(|error| invalid_key(error, path, from_env))
        .collect()
}

fn invalid_key(error: figment::Error, path: &str, from_env: &[(String, String)]) -> ConfigError {
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

/// `SIGNUP_SIM_…`: the delivery simulation's knobs, never configuration keys.
const SIM_PREFIX: &str = "SIM_";
