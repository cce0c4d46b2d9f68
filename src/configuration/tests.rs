use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_documented_config_toml_equals_the_compiled_defaults() {
    let documented =
        Settings::from_sources(DOCUMENTED_DEFAULTS, "config.toml", []).expect("config.toml parses");
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
            // The simulation's knob, as CI sets it for the whole `cargo test`: not a key (the
            // command-line tests' `signup` processes inherit it).
            ("SIGNUP_SIM_SCHEDULES", "20000"),
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
