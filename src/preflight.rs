//! Before serving (SPEC §9): `signup check` loads and validates the configuration exactly as
//! `serve` does, builds the provider client and opens the database, and starts nothing. The
//! systemd unit runs it as `ExecStartPre`, so a bad key stops a start with every problem named.

use std::path::Path;
use std::process::ExitCode;

use crate::configuration::Settings;

/// `EX_CONFIG` (sysexits.h): the configuration is wrong.
pub const EX_CONFIG: u8 = 78;

/// `signup check`: one line per problem on stderr and exit 78, or a summary and exit 0.
pub async fn check(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> ExitCode {
    let settings = match Settings::load(file, env) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("signup check: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let mut problems = Vec::new();
    let key = settings
        .email_sync
        .secret
        .clone()
        .unwrap_or_else(crate::email::webhook::WebhookKey::random);
    if let Err(e) = crate::startup::provider_of(&settings.email_sync, key) {
        problems.push(format!("email_sync: {e}"));
    }
    match crate::database::connect(&settings.database).await {
        Ok(db) => {
            let _ = db.close().await;
        }
        Err(e) => problems.push(format!("database.url: cannot open the database: {e}")),
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("signup check: {problem}");
        }
        return ExitCode::from(EX_CONFIG);
    }
    println!(
        "signup check: configuration valid ({}), email_sync.kind = {}, database opened",
        file.map_or_else(
            || "config.toml or defaults".to_owned(),
            |f| f.display().to_string()
        ),
        settings.email_sync.kind.as_str()
    );
    ExitCode::SUCCESS
}

/// `signup doctor` (SPEC §9): the outside world with the real configuration — the database
/// answers and its migrations are current, the provider's credentials work (one read-only
/// call), the inbound hook of the configured kind has its credential. One line per check with
/// what to fix; exit 1 if any fails.
pub async fn doctor(settings: &Settings) -> ExitCode {
    let mut failed = 0;
    let mut say = |result: Result<String, String>| match result {
        Ok(line) => println!("ok    {line}"),
        Err(line) => {
            failed += 1;
            println!("FAIL  {line}");
        }
    };
    say(database(settings).await);
    say(provider(settings).await);
    say(inbound(settings));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("signup doctor: {failed} check(s) failed");
        ExitCode::FAILURE
    }
}

/// The database answers and no migration is pending.
async fn database(settings: &Settings) -> Result<String, String> {
    use migration::MigratorTrait;
    let db = crate::database::connect(&settings.database)
        .await
        .map_err(|e| format!("database: cannot open it: {e}: check database.url"))?;
    let pending = migration::Migrator::get_pending_migrations(&db).await;
    let _ = db.close().await;
    match pending {
        Ok(pending) if pending.is_empty() => Ok("database: answers, migrations current".into()),
        Ok(pending) => Err(format!(
            "database: {} migration(s) pending: run `signup migrate` (the server applies them at start)",
            pending.len()
        )),
        Err(e) => Err(format!("database: cannot read its migrations: {e}")),
    }
}

/// One read-only call to the provider `email_sync.kind` names.
async fn provider(settings: &Settings) -> Result<String, String> {
    let sync = &settings.email_sync;
    let kind = sync.kind.as_str();
    let key = match (&sync.secret, sync.kind) {
        (Some(key), _) => key.clone(),
        (None, crate::configuration::ProviderKind::Webhook) => {
            return Err("provider (webhook): email_sync.secret is not set: the receiver cannot verify what signup sends (SIGNUP_EMAIL_SYNC__SECRET=whsec_…)".into());
        }
        (None, _) => crate::email::webhook::WebhookKey::random(),
    };
    let provider =
        crate::startup::provider_of(sync, key).map_err(|e| format!("provider ({kind}): {e}"))?;
    provider
        .probe()
        .await
        .map(|line| format!("provider ({kind}): {line}, credentials work"))
        .map_err(|line| format!("provider ({kind}): {line}"))
}

/// The configured kind's inbound hook (SPEC §8) has its credential: without it the provider's
/// unsubscribes, bounces and complaints never reach signup.
fn inbound(settings: &Settings) -> Result<String, String> {
    use crate::configuration::ProviderKind;
    let sync = &settings.email_sync;
    let key = match sync.kind {
        ProviderKind::Webhook => {
            return Ok("consent hooks: kind webhook takes no provider events".into());
        }
        ProviderKind::Mailchimp => "email_sync.mailchimp.webhook_secret",
        ProviderKind::Sendgrid => "email_sync.sendgrid.webhook_public_key",
        ProviderKind::Brevo => "email_sync.brevo.webhook_token",
        ProviderKind::Resend => "email_sync.resend.webhook_secret",
        ProviderKind::Mailgun => "email_sync.mailgun.webhook_signing_key",
    };
    // The routes' own rule (`/hooks/<kind>` is 404 unless this holds).
    let set = crate::consent::HookCredentials::from_settings(sync).is_on(sync.kind);
    let kind = sync.kind.as_str();
    if set {
        Ok(format!("consent hooks: /hooks/{kind} is on ({key} is set)"))
    } else {
        Err(format!(
            "consent hooks: /hooks/{kind} is off: set {key}, or the provider's unsubscribes and bounces never reach signup (README, \"Consent\")"
        ))
    }
}
