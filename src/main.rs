use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signup::configuration::{ProviderKind, Settings};
use signup::startup::Application;
use signup::{database, mock_provider, outbox_cli, telemetry};

/// signup: a registration server.
/// The version and the commit it was built from (SPEC §9).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    include_str!(concat!(env!("OUT_DIR"), "/commit.txt")),
    ")"
);

#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Configuration file (default: ./config.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Validate the configuration as `serve` would, build the provider client and open the
    /// database; start nothing. Exit 0, or 78 naming every problem.
    Check,
    /// Check the outside world with this configuration: the database and its migrations, the
    /// provider's credentials (one read-only call), the consent hook's credential.
    Doctor,
    /// Manage users.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Inspect and replay email sync jobs.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Run a local stand-in for the email provider that verifies and prints deliveries, or
    /// send a signup one of a provider's events (`send-event`).
    #[command(args_conflicts_with_subcommands = true)]
    MockProvider {
        #[command(subcommand)]
        action: Option<MockAction>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        bind: String,
        /// Signing secret (whsec_...); requests with a bad signature get 401.
        #[arg(long)]
        secret: Option<String>,
        /// Fraction of requests (0-1) answered 503.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Delay before each answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Answer every request with this status.
        #[arg(long)]
        status: Option<u16>,
        /// The API to speak: webhook, mailchimp, sendgrid, brevo, resend or mailgun.
        #[arg(long, default_value = "webhook", value_parser = parse_kind)]
        kind: ProviderKind,
        /// With a provider kind: the API key requests must carry.
        #[arg(long)]
        api_key: Option<String>,
        /// Print nothing per request (for benchmarks).
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum MockAction {
    /// Send a running signup one event about an address, shaped and signed as the provider
    /// `--kind` sends it (SPEC §8), with the credential signup is configured with.
    SendEvent {
        /// The provider: mailchimp, sendgrid, brevo, resend or mailgun.
        #[arg(long, value_parser = parse_kind)]
        kind: ProviderKind,
        /// The provider's own name of the event: mailchimp `unsubscribe`, `cleaned`,
        /// `subscribe`; sendgrid `unsubscribe`, `spamreport`, `bounce`; brevo `unsubscribed`,
        /// `hardBounce`, `spam`; resend `contact.updated`, `email.bounced`, `email.complained`;
        /// mailgun `unsubscribed`, `complained`, `failed` (sent as a permanent failure).
        #[arg(long = "type")]
        event_type: String,
        /// The address the event is about.
        #[arg(long)]
        email: String,
        /// The signup to send it to (default: server.bind of the configuration).
        #[arg(long)]
        to: Option<String>,
        /// The credential to sign with (default: the kind's webhook setting in the
        /// configuration; SendGrid's events are signed with the mock's own key).
        #[arg(long)]
        secret: Option<String>,
        /// The provider's event id (default: a new one).
        #[arg(long)]
        id: Option<String>,
        /// How long ago the event happened, in seconds.
        #[arg(long, default_value_t = 0)]
        seconds_ago: i64,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Erase a user here and (queued, in order) at the email provider: GDPR art. 17.
    Delete {
        /// The user's id, or the email address they registered with.
        who: signup::erasure::Who,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// List the newest jobs.
    List {
        /// Only jobs with this status: pending, dead or delivered.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Make a dead (or pending) job due now, attempts reset.
    Retry {
        /// The job's id.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<uuid::Uuid>,
        /// Every dead job.
        #[arg(long)]
        all_dead: bool,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
            kind,
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
    let _log_writer = telemetry::init(&settings.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::Doctor => return signup::preflight::doctor(&settings).await,
        Command::Outbox { action } => outbox(settings, action).await,
        Command::Users {
            action: UsersAction::Delete { who },
        } => erase(settings, who).await,
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

/// `--kind` as `email_sync.kind` spells it.
fn parse_kind(text: &str) -> Result<ProviderKind, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| "expected webhook, mailchimp, sendgrid, brevo, resend or mailgun".to_owned())
}
