//! signup: a registration server that answers sign-ups synchronously and syncs new users to the
//! email provider asynchronously. Reading these modules top to bottom is a tour of it.
//!
//! An item is `pub` only where `main`, the benches or the tests reach it through here; the rest
//! is `pub(crate)` or private, so the visibility says what the crate's surface is.
#![warn(unreachable_pub)]

/// The email sync's last hour, minute by minute, for the operator console.
mod activity;
/// The two actors: RegistrationActor (serialized writes) and the email sync's messages.
pub mod actors;
/// The provider's budget (max in flight, requests a second, its pause): in memory for one
/// process, in PostgreSQL for all instances together.
mod budget;
/// Settings from `config.toml` and `SIGNUP_…` variables.
pub mod configuration;
/// Consent: the provider's events kept per contact and never undone (SPEC §8).
mod consent;
/// Connecting to SQLite / PostgreSQL and migrating.
pub mod database;
/// SQLite: the database file is still the one the server opened.
mod db_file;
/// The delivery core: every decision of the email sync as plain data and functions, driven
/// by inputs that carry their own time (the EmailSyncActor is its shell).
mod delivery;
/// Username, Email, Password: parsed, normalised, validated.
pub mod domain;
/// The email provider: webhook signing and classification, retry schedule, circuit breaker.
pub mod email;

pub mod erasure;
/// An error with its causes as one line.
mod error_chain;
/// argon2id hashing on threads of its own, one per core.
mod hashing;
/// Idempotent submissions: keys, their fingerprints, replays, expiry.
mod idempotency;
/// Prometheus metrics, one registry per application.
pub mod metrics;
/// `signup mock-provider`: a local stand-in for the email provider.
pub mod mock_provider;
/// Claiming, completing and cleaning outbox rows (the delivery side).
pub mod outbox;
/// `signup outbox list | retry`.
pub mod outbox_cli;
/// `signup check` and `signup doctor`: the configuration, then the outside world, before serving.
pub mod preflight;
/// Per-client rate limiting of the registration routes.
mod rate_limit;
/// The pipeline validate → hash → RegistrationActor, shared by API and form.
mod registrar;
/// HTTP handlers.
mod routes;
/// Operator console sessions, stored so that signing out ends them on every instance.
mod sessions;
/// Field deserializers shared by the settings sections.
mod settings_de;
/// Building and running the server.
pub mod startup;
/// The registration's transaction and the queries around users and the outbox.
pub mod store;
/// A registration's ticket to its COMMIT: a 503 is never stored.
mod ticket;

/// The registration's transaction, for the group-commit tests and the benchmark's raw loop
/// only (feature `internals`, on in dev-dependencies): in a shipped build the RegistrationActor
/// is its only caller.
#[cfg(feature = "internals")]
pub mod internals {
    use crate::store::{Candidate, Outcome};

    pub use crate::store::Writer;

    /// [`Writer::register_batch`] on a writer of its own: the registration's transaction for
    /// `candidates`.
    pub async fn register_batch(
        db: &sea_orm::DatabaseConnection,
        candidates: &[Candidate],
    ) -> Result<Vec<Outcome>, sea_orm::DbErr> {
        Writer::new(db.clone()).register_batch(candidates).await
    }
}
/// Log output.
pub mod telemetry;
