//! The registration pipeline shared by the JSON API and the HTML form:
//! validate → hash (hashing threads, in parallel) → RegistrationActor (serialized) → outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::actors::{Registered, Registrations};
use crate::domain::{Email, FieldError, NewRegistration, Username};
use crate::hashing::{HashConsumer, HashError, PasswordHasher};
use crate::idempotency::{self, API_KEY_PREFIX, IdempotencyKey, fingerprint};
use crate::metrics::Metrics;
use crate::store::{Candidate, Outcome};
use crate::ticket::{Holder, Ticket};

/// Why a registration did not reach an [`Outcome`]. A taken name or address is an outcome, not
/// an error. The HTTP boundary maps each variant to its status in one place
/// (`From<RegistrationError> for ApiError`, in `routes::error`).
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Bad input, every failing field listed; nothing was touched.
    #[error("some fields are invalid")]
    Invalid(Vec<FieldError>),
    /// More requests wait for a hashing thread than `password.max_waiting`: shed at once.
    #[error(transparent)]
    Overloaded(HashError),
    /// `registration.deadline` passed before the registration's COMMIT began: it was
    /// withdrawn, nothing is stored.
    #[error("registration.deadline passed before the registration was stored")]
    DeadlinePassed,
    /// The COMMIT began before the deadline and has not finished a deadline later: whether it
    /// is stored is unknown. A retry with the same username, email and password is safe.
    #[error("the database has not confirmed the registration's commit")]
    CommitUnconfirmed,
    /// The database (or the RegistrationActor) did not store it; nothing was written.
    #[error("the registration could not be stored")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Hashing failed: a bug or a dead hashing thread, never bad input.
    #[error("password hashing failed")]
    Hashing(#[source] HashError),
}

impl From<HashError> for RegistrationError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => RegistrationError::Overloaded(e),
            e => RegistrationError::Hashing(e),
        }
    }
}

impl From<sea_orm::DbErr> for RegistrationError {
    fn from(e: sea_orm::DbErr) -> Self {
        RegistrationError::Unavailable(Box::new(e))
    }
}

/// The fields as submitted, before any check.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password: &'a str,
}

/// What makes a submission safe to repeat.
#[derive(Debug, Clone)]
pub(crate) enum Submission {
    /// No key: a repeat is a new registration attempt (and 409s).
    Plain,
    /// The HTML form's nonce: a repeat lands on the first outcome, whatever was edited.
    Form { nonce: String },
    /// The API's `Idempotency-Key`: a repeat of the same request gets the first 201; the same
    /// key with another request is 422 `idempotency_key_reused`.
    Api { key: String },
}

/// Where a registration comes from: its request's id, for the log lines, and its trace context
/// (SPEC §9), stored on its outbox row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub request_id: String,
    /// The request span's W3C `traceparent`.
    pub trace: Option<crate::telemetry::trace::TraceParent>,
}

/// What the routes need to register someone.
#[derive(Clone)]
pub(crate) struct Registrar {
    pub hasher: PasswordHasher,
    pub registrations: Registrations,
    pub metrics: Arc<Metrics>,
    /// For idempotency-key lookups (reads only; writes go through the actor).
    pub db: sea_orm::DatabaseConnection,
    /// `registration.deadline`: the longest a registration is waited for before 503.
    pub deadline: Duration,
}

impl Registrar {
    /// Registers the raw fields. Bad input is `RegistrationError::Invalid` and touches nothing;
    /// a taken name or address is an `Outcome`, not an error.
    /// `origin` follows the registration into the actor's log lines and its outbox row.
    pub(crate) async fn register(
        &self,
        fields: Fields<'_>,
        submission: Submission,
        origin: &Origin,
    ) -> Result<Outcome, RegistrationError> {
        let started = Instant::now();
        // At the deadline the caller gives up, which withdraws the registration before its
        // COMMIT, or, if the COMMIT is under way, waits once more for its outcome: a 503 is
        // never stored (SPEC §4.7). Dropped (the client left), the holder gives up too.
        let holder = Holder(Ticket::new());
        let pipeline = self.register_unmeasured(fields, submission, origin, &holder.0);
        tokio::pin!(pipeline);
        let result = match tokio::time::timeout(self.deadline, &mut pipeline).await {
            Ok(result) => result,
            Err(_) if holder.0.give_up() => Err(RegistrationError::DeadlinePassed),
            Err(_) => tokio::time::timeout(self.deadline, &mut pipeline)
                .await
                .unwrap_or(Err(RegistrationError::CommitUnconfirmed)),
        };
        // Withdrawn means the caller gave up, which only a caller past its deadline does.
        let result = match result {
            Ok(Outcome::Withdrawn) => Err(RegistrationError::DeadlinePassed),
            other => other,
        };
        let outcome = match &result {
            Ok(Outcome::Created(_) | Outcome::Replayed(_)) => "created",
            Ok(Outcome::UsernameTaken) => "username_taken",
            Ok(Outcome::EmailTaken) => "email_taken",
            Ok(Outcome::IdempotencyKeyReused) | Err(RegistrationError::Invalid(_)) => "invalid",
            Ok(Outcome::Withdrawn) | Err(_) => "error",
        };
        self.metrics
            .registrations
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .registration_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn register_unmeasured(
        &self,
        fields: Fields<'_>,
        submission: Submission,
        origin: &Origin,
        ticket: &Ticket,
    ) -> Result<Outcome, RegistrationError> {
        let password = fields.password;
        let new = NewRegistration::parse(fields.username, fields.email, password)
            .map_err(RegistrationError::Invalid)?;
        let idempotency = match submission {
            Submission::Plain => None,
            Submission::Form { nonce } => Some(IdempotencyKey {
                key: format!("form:{nonce}"),
                fingerprint: String::new(),
            }),
            Submission::Api { key } => {
                let key = IdempotencyKey {
                    key: format!("{API_KEY_PREFIX}{key}"),
                    fingerprint: fingerprint(&new),
                };
                if let Some(outcome) = self.replay(&key.key, &key.fingerprint, password).await? {
                    return Ok(outcome);
                }
                Some(key)
            }
        };
        let api_key = idempotency
            .clone()
            .filter(|key| key.key.starts_with(API_KEY_PREFIX));
        let fingerprint = fingerprint(&new);
        let person = (
            new.username.normalized().to_owned(),
            new.email.normalized().to_owned(),
        );
        let (reply, answer) = oneshot::channel();
        // The hashing thread hands the candidate to the actor itself: this thread is woken once,
        // by the answer, not also in between to pass the hash on.
        self.hasher.hash_then(
            new.password,
            ToActor {
                registrations: self.registrations.clone(),
                username: new.username,
                email: new.email,
                idempotency,
                origin: origin.clone(),
                ticket: ticket.clone(),
                reply,
            },
        )?;
        let outcome = answer.await.map_err(|_| {
            RegistrationError::Unavailable(
                "the hashing thread or the registration actor stopped".into(),
            )
        })??;
        match (outcome, api_key) {
            // A concurrent request with the same key created the user while this one was
            // hashing: this one is a replay too, and must prove the same password.
            (Outcome::Replayed(_), Some(key)) => Ok(self
                .replay(&key.key, &fingerprint, password)
                .await?
                .unwrap_or(Outcome::IdempotencyKeyReused)),
            (outcome @ (Outcome::UsernameTaken | Outcome::EmailTaken), _) => Ok(self
                .just_created(&person.0, &person.1, password)
                .await?
                .map_or(outcome, Outcome::Replayed)),
            (outcome, _) => Ok(outcome),
        }
    }

    /// The account this very person created less than [`RETRY_WINDOW`] ago: same username and
    /// email, and the password verified against its stored hash (as an idempotent replay is).
    /// A retry after an unclear answer (a 503 whose COMMIT's outcome was unknown, a lost
    /// connection) then gets 201 and the same Location, not 409.
    async fn just_created(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> Result<Option<crate::store::RegisteredUser>, RegistrationError> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(RETRY_WINDOW).unwrap_or(chrono::Duration::zero());
        let found = entity::user::Entity::find()
            .filter(entity::user::Column::EmailNormalized.eq(email))
            .filter(entity::user::Column::UsernameNormalized.eq(username))
            .filter(entity::user::Column::CreatedAt.gt(since))
            .one(&self.db)
            .await?;
        let Some(user) = found else {
            return Ok(None);
        };
        let same_password = self.hasher.verify(password, &user.password_hash).await?;
        Ok(same_password.then(|| user.into()))
    }
}

/// How long after creating an account the same person, registering again with the same
/// username, email and password, gets that account back (201) instead of 409.
pub(crate) const RETRY_WINDOW: Duration = Duration::from_secs(10 * 60);

impl Registrar {
    /// The answer to a repeated API key, if the key was used before (and is not expired).
    /// A repeat must be the same request: same username and email (the fingerprint) and the
    /// same password, checked against the stored argon2 hash, so no fast hash of the password
    /// is ever stored.
    async fn replay(
        &self,
        key: &str,
        fingerprint: &str,
        password: &str,
    ) -> Result<Option<Outcome>, RegistrationError> {
        let known = idempotency::find_key(&self.db, key).await?;
        let Some((stored_fingerprint, user, password_hash)) = known else {
            return Ok(None);
        };
        if stored_fingerprint != fingerprint {
            return Ok(Some(Outcome::IdempotencyKeyReused));
        }
        let same_password = self.hasher.verify(password, &password_hash).await?;
        Ok(Some(if same_password {
            Outcome::Replayed(user)
        } else {
            Outcome::IdempotencyKeyReused
        }))
    }
}

/// A registration on its way from the hashing thread to the RegistrationActor: everything of the
/// candidate but its hash, and where the answer goes.
struct ToActor {
    registrations: Registrations,
    username: Username,
    email: Email,
    idempotency: Option<IdempotencyKey>,
    origin: Origin,
    ticket: Ticket,
    reply: oneshot::Sender<Registered>,
}

impl HashConsumer for ToActor {
    fn wanted(&self) -> bool {
        !self.reply.is_closed() && !self.ticket.gave_up()
    }

    fn take(self: Box<Self>, hash: Result<String, HashError>) {
        let password_hash = match hash {
            Ok(hash) => hash,
            Err(e) => {
                let _ = self.reply.send(Err(e.into()));
                return;
            }
        };
        let candidate = Candidate {
            username: self.username,
            email: self.email,
            password_hash,
            idempotency: self.idempotency,
            request_id: self.origin.request_id,
            trace: self.origin.trace,
            ticket: self.ticket,
        };
        self.registrations.submit(candidate, self.reply);
    }
}
