//! The command line, and only it: `main.rs` runs it, and `build.rs` includes this file to
//! generate the shell completions and man pages from it (SPEC §9). So it names nothing of the
//! signup library; `main.rs` turns what it parses into the library's types.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// An `email_sync.kind`, as the mock provider's `--kind` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Standard Webhooks.
    Webhook,
    /// Mailchimp's list members API.
    Mailchimp,
    /// SendGrid's marketing contacts API.
    Sendgrid,
    /// Brevo's contacts API.
    Brevo,
    /// Resend's contacts API.
    Resend,
    /// Mailgun's mailing list members API.
    Mailgun,
}

/// A registration server: synchronous sign-up, asynchronous email-provider sync.
///
/// signup answers a sign-up at once (the account exists or the name is taken) and registers the
/// person with the email provider in the background, retried until the provider takes it.
/// Settings come from the configuration file and SIGNUP_<SECTION>__<KEY> environment variables
/// (the package's: /etc/signup/config.toml, secrets in /etc/signup/env); README.md, under
/// /usr/share/doc/signup, has every key and the operations.
#[derive(Parser)]
#[command(name = "signup", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./config.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
        #[arg(long, value_enum, default_value_t = Kind::Webhook)]
        kind: Kind,
        /// With a provider kind: the API key requests must carry.
        #[arg(long)]
        api_key: Option<String>,
        /// Print nothing per request (for benchmarks).
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
pub enum MockAction {
    /// Send a running signup one event about an address, shaped and signed as the provider
    /// `--kind` sends it (SPEC §8), with the credential signup is configured with.
    SendEvent {
        /// The provider: mailchimp, sendgrid, brevo, resend or mailgun.
        #[arg(long, value_enum)]
        kind: Kind,
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
pub enum UsersAction {
    /// Erase a user here and (queued, in order) at the email provider: GDPR art. 17.
    Delete {
        /// The user's id, or the email address they registered with.
        who: String,
    },
}

#[derive(Subcommand)]
pub enum OutboxAction {
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
