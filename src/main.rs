use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command, MockAction, OutboxAction, UsersAction};
use signup::configuration::{ProviderKind, Settings};
use signup::startup::Application;
use signup::{database, mock_provider, outbox_cli, telemetry};

mod cli;

/// The version and the commit it was built from (SPEC §9).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    include_str!(concat!(env!("OUT_DIR"), "/commit.txt")),
    ")"
);

#[actix_web::main]
async fn main() -> ExitCode {
    let matches = Cli::command().version(VERSION).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Every command that builds an HTTP client (serve, check, doctor, send-event) needs it.
    signup::startup::install_crypto_provider();
    if let Some(Command::MockProvider {
        action: None,
        bind,
        secret,
        fail_rate,
        latency_ms,
        status,
        kind,
        api_key,
        quiet,
    }) = cli.command
    {
        let options = mock_provider::MockOptions {
            bind,
            secret,
            fail_rate,
            latency: std::time::Duration::from_millis(latency_ms),
            status,
            quiet,
            kind: provider_kind(kind),
            api_key,
        };
        return match mock_provider::run(options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("signup mock-provider: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Check) = cli.command {
        return signup::preflight::check(cli.config.as_deref(), std::env::vars()).await;
    }
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("signup: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&settings.log, &settings.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("signup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::Doctor => return signup::preflight::doctor(&settings).await,
        Command::Outbox { action } => outbox(settings, action).await,
        Command::Users {
            action: UsersAction::Delete { who },
        } => erase(settings, who.parse().unwrap_or_else(|never| match never {})).await,
        Command::MockProvider {
            action: Some(action),
            ..
        } => send_event(&settings, action).await,
        Command::MockProvider { action: None, .. } | Command::Check => {
            unreachable!("handled before loading settings")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("signup: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let bind = settings.server.bind;
    let app = Application::build(settings).await?;
    tracing::info!(%bind, port = app.port(), "signup is serving; the form is at /register");
    app.run_until_stopped().await?;
    tracing::info!("signup stopped");
    Ok(())
}

async fn outbox(
    settings: Settings,
    action: OutboxAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = database::connect(&settings.database).await?;
    database::migrate(&db).await?;
    let text = match action {
        OutboxAction::List { status, limit } => {
            let status = status
                .as_deref()
                .map(outbox_cli::parse_status)
                .transpose()?;
            outbox_cli::list(&db, status, limit).await?
        }
        OutboxAction::Retry { all_dead: true, .. } => outbox_cli::retry_all_dead(&db).await?,
        OutboxAction::Retry { id: Some(id), .. } => outbox_cli::retry(&db, id).await?,
        OutboxAction::Retry { id: None, .. } => return Err("give a job id or --all-dead".into()),
    };
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

async fn erase(
    settings: Settings,
    who: signup::erasure::Who,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = database::connect(&settings.database).await?;
    database::migrate(&db).await?;
    match signup::erasure::erase(&db, &who, chrono::Utc::now()).await {
        Ok(erased) => {
            signup::erasure::forget_on_disk(&db).await;
            tracing::info!(user_id = %erased.user_id, deletion_job = %erased.deletion_job, "erased a user from the command line");
            println!(
                "erased user {}: {} undelivered job(s) cancelled, {} job(s) scrubbed of username and email; \
                 user.deleted job {} queued (it removes them at the email provider; \
                 `signup outbox list` shows it)",
                erased.user_id, erased.cancelled, erased.scrubbed, erased.deletion_job
            );
            Ok(())
        }
        Err(signup::erasure::EraseError::NotFound) => {
            Err("no such user (never registered, or erased already)".into())
        }
        Err(e) => Err(e.into()),
    }
}

async fn send_event(
    settings: &Settings,
    action: MockAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let MockAction::SendEvent {
        kind,
        event_type,
        email,
        to,
        secret,
        id,
        seconds_ago,
    } = action;
    let kind = provider_kind(kind);
    let now = chrono::Utc::now();
    let event = mock_provider::EventToSend {
        kind,
        event_type,
        email,
        at: now - chrono::Duration::seconds(seconds_ago),
        id: id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
    };
    let credential =
        secret.unwrap_or_else(|| mock_provider::configured_credential(&settings.email_sync, kind));
    let request = mock_provider::signed(&event, &credential, now)?;
    let base = match to {
        Some(to) => reqwest::Url::parse(&to).map_err(|e| format!("--to {to}: {e}"))?,
        None => mock_provider::base_of(settings.server.bind)?,
    };
    if kind == ProviderKind::Sendgrid {
        eprintln!(
            "signed with the mock's own key: signup accepts it with email_sync.sendgrid.webhook_public_key = \"{}\"",
            mock_provider::sendgrid_public_key()
        );
    }
    let (status, answer) = mock_provider::send(&base, &request).await?;
    println!(
        "{} {} about {} -> {status} {answer}",
        request
            .path
            .split('/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/"),
        event.event_type,
        event.email
    );
    match status {
        200..=299 => Ok(()),
        404 => Err(format!(
            "signup answered 404: its /hooks/{} route is off until that provider's webhook credential is configured (README, \"Consent\")",
            kind.as_str()
        )
        .into()),
        _ => Err(format!("signup answered {status}").into()),
    }
}

async fn migrate(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let db = database::connect(&settings.database).await?;
    database::migrate(&db).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `--kind` as the library's kind.
fn provider_kind(kind: cli::Kind) -> ProviderKind {
    match kind {
        cli::Kind::Webhook => ProviderKind::Webhook,
        cli::Kind::Mailchimp => ProviderKind::Mailchimp,
        cli::Kind::Sendgrid => ProviderKind::Sendgrid,
        cli::Kind::Brevo => ProviderKind::Brevo,
        cli::Kind::Resend => ProviderKind::Resend,
        cli::Kind::Mailgun => ProviderKind::Mailgun,
    }
}
