//! The consent table: a verified event applied to its contact in one transaction (SPEC §8),
//! and the state read back for the registration view.

use chrono::SubsecRound;
use chrono::{DateTime, Utc};
use entity::{consent, email_outbox, provider_event, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QuerySelect, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use super::{ConsentState, Event, Source, supersedes};
use crate::domain::Email;
use crate::email::event::UserConsentChanged;
use crate::outbox::ContactKey;

/// What became of one verified event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The contact's state is the event's now.
    Applied,
    /// The same event id was seen before: nothing changed.
    Replayed,
    /// Not about consent (delivered, opened, a temporary failure): nothing to keep.
    NotConsent,
    /// No user and no kept entry has this address.
    UnknownAddress,
    /// The contact's state was set by a newer event: it stays.
    Older,
}

impl Verdict {
    /// `signup_provider_events_total`'s `outcome`: `applied`, or `ignored`.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            _ => "ignored",
        }
    }
}

/// Applies `event`, sent by the provider `kind`, in one transaction: remembers its id (a
/// replay finds it), and sets the contact's state unless a newer event set it. With `forward`
/// (kind `webhook`, SPEC §8), an applied change of a registered user is also written to the
/// outbox as `user.consent_changed`, in the same transaction, after the user's other rows.
pub(crate) async fn apply(
    db: &DatabaseConnection,
    key: &ContactKey,
    kind: &'static str,
    event: &Event,
    now: DateTime<Utc>,
    forward: bool,
) -> Result<Verdict, DbErr> {
    let Some(state) = event.state else {
        return Ok(Verdict::NotConsent);
    };
    let Ok(email) = Email::parse(&event.email) else {
        return Ok(Verdict::UnknownAddress);
    };
    let contact = key.of(email.normalized());
    // IMMEDIATE on SQLite: this transaction reads, then writes (see `store`).
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    // Locked on PostgreSQL: an erasure of the person, or another event's `user.consent_changed`
    // for them, waits for this transaction (and this one for theirs).
    let person = user::Entity::find()
        .filter(user::Column::EmailNormalized.eq(email.normalized()))
        .lock_exclusive()
        .one(&txn)
        .await?;
    // Locked too: an erased person's kept entry has no user row to serialize on.
    let current = consent::Entity::find_by_id(contact.clone())
        .lock_exclusive()
        .one(&txn)
        .await?;
    if person.is_none() && current.is_none() {
        return Ok(Verdict::UnknownAddress);
    }
    let remembered = provider_event::Entity::insert(provider_event::ActiveModel {
        kind: Set(kind.to_owned()),
        event_id: Set(event.id.clone()),
        contact: Set(Some(contact.clone())),
        received_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([
            provider_event::Column::Kind,
            provider_event::Column::EventId,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if remembered == 0 {
        return Ok(Verdict::Replayed);
    }
    // `pending` is signup's own inference from an upsert answered (double opt-in asked): the
    // provider's word on the person replaces it, whatever the clocks say.
    let inferred = current.as_ref().is_some_and(|c| {
        c.state == ConsentState::Pending.as_str() && c.source == Source::ProviderAnswer.as_str()
    });
    if let Some(current) = &current
        && !inferred
        && !supersedes(
            current.changed_at,
            current.event_id.as_deref(),
            event.at,
            Some(&event.id),
        )
    {
        txn.commit().await?;
        return Ok(Verdict::Older);
    }
    set(
        &txn,
        contact.clone(),
        state,
        event.at,
        Source::ProviderEvent,
        kind,
        Some(&event.id),
    )
    .await?;
    if forward && let Some(person) = person {
        let change = UserConsentChanged {
            user_id: person.id,
            email: person.email,
            state,
            changed_at: event.at,
            source: Source::ProviderEvent,
            provider: kind.to_owned(),
        };
        forward_change(&txn, &change, contact, now).await?;
    }
    txn.commit().await?;
    Ok(Verdict::Applied)
}

/// Writes `change` to the outbox as its user's next row (SPEC §8: kind `webhook` forwards it,
/// in order per contact like every row).
async fn forward_change<C: ConnectionTrait>(
    txn: &C,
    change: &UserConsentChanged,
    contact: String,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use sea_orm::{ActiveModelTrait, QueryOrder};
    let last_seq = email_outbox::Entity::find()
        .filter(email_outbox::Column::UserId.eq(change.user_id))
        .order_by_desc(email_outbox::Column::Seq)
        .one(txn)
        .await?
        .map_or(0, |row| row.seq);
    crate::outbox::new_row(
        uuid::Uuid::now_v7(),
        change.user_id,
        email_outbox::EventType::UserConsentChanged,
        change.to_payload(),
        last_seq + 1,
        contact,
        now.trunc_subsecs(6),
    )
    .insert(txn)
    .await?;
    Ok(())
}

/// The provider's answer to a delivery says `contact` is in `state` (Mailchimp's compliance
/// state, or `pending` for a double opt-in asked): recorded as of `now`, source `provider
/// answer`, unless a newer statement stands (for `pending`: unless anything was said).
pub(crate) async fn set_from_answer(
    db: &DatabaseConnection,
    contact: String,
    state: ConsentState,
    kind: &'static str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    let current = consent::Entity::find_by_id(contact.clone())
        .one(&txn)
        .await?;
    let stands = match &current {
        // Asked to confirm: says nothing over what the person or the provider said before.
        Some(_) if state == ConsentState::Pending => true,
        Some(c) => !supersedes(c.changed_at, c.event_id.as_deref(), now, None),
        None => false,
    };
    if stands {
        return Ok(());
    }
    set(
        &txn,
        contact,
        state,
        now,
        Source::ProviderAnswer,
        kind,
        None,
    )
    .await?;
    txn.commit().await
}

/// Mailchimp asked `contacts` to confirm (double opt-in): `pending` for each of them nothing
/// was said about yet, in one statement per thousand.
pub(crate) async fn pending_where_unknown(
    db: &DatabaseConnection,
    contacts: &[String],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    for chunk in contacts.chunks(1000) {
        let rows = chunk.iter().map(|contact| consent::ActiveModel {
            contact: Set(contact.clone()),
            state: Set(ConsentState::Pending.as_str().to_owned()),
            changed_at: Set(now),
            source: Set(Source::ProviderAnswer.as_str().to_owned()),
            kind: Set(Some("mailchimp".to_owned())),
            event_id: Set(None),
        });
        consent::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(consent::Column::Contact)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Writes the contact's state.
async fn set<C: ConnectionTrait>(
    db: &C,
    contact: String,
    state: ConsentState,
    at: DateTime<Utc>,
    source: Source,
    kind: &'static str,
    event_id: Option<&str>,
) -> Result<(), DbErr> {
    consent::Entity::insert(consent::ActiveModel {
        contact: Set(contact),
        state: Set(state.as_str().to_owned()),
        changed_at: Set(at),
        source: Set(source.as_str().to_owned()),
        kind: Set(Some(kind.to_owned())),
        event_id: Set(event_id.map(str::to_owned)),
    })
    .on_conflict(
        OnConflict::column(consent::Column::Contact)
            .update_columns([
                consent::Column::State,
                consent::Column::ChangedAt,
                consent::Column::Source,
                consent::Column::Kind,
                consent::Column::EventId,
            ])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Erasure's part (SPEC §6, §8): the contact's events go, and its state too unless it
/// suppresses (unsubscribed, complained, cleaned): that entry, keyed by the keyed hash and
/// holding no address, is the one thing kept, so that the address registered again is never
/// subscribed again.
pub(crate) async fn forget<C: ConnectionTrait>(db: &C, contact: &str) -> Result<(), DbErr> {
    provider_event::Entity::delete_many()
        .filter(provider_event::Column::Contact.eq(contact))
        .exec(db)
        .await?;
    let kept: Vec<&str> = ConsentState::ALL
        .into_iter()
        .filter(|state| state.suppresses())
        .map(ConsentState::as_str)
        .collect();
    consent::Entity::delete_many()
        .filter(consent::Column::Contact.eq(contact))
        .filter(consent::Column::State.is_not_in(kept))
        .exec(db)
        .await?;
    // What is kept says no more than that someone at this address declined, and when.
    consent::Entity::update_many()
        .col_expr(
            consent::Column::EventId,
            sea_orm::sea_query::Expr::value(Option::<String>::None),
        )
        .filter(consent::Column::Contact.eq(contact))
        .exec(db)
        .await?;
    Ok(())
}

/// Of `contacts`, those whose person declined, with the state (SPEC §8): no delivery may
/// subscribe them again.
pub(crate) async fn declined<C: ConnectionTrait>(
    db: &C,
    contacts: &[&str],
) -> Result<std::collections::HashMap<String, ConsentState>, DbErr> {
    if contacts.is_empty() {
        return Ok(Default::default());
    }
    let rows = consent::Entity::find()
        .filter(consent::Column::Contact.is_in(contacts.iter().copied()))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let state = ConsentState::parse(&row.state)?;
            state.suppresses().then_some((row.contact, state))
        })
        .collect())
}

/// Deletes the provider event ids received before `cutoff` (`email_sync.retention`): a replay
/// older than that is only an older event, which changes nothing either.
pub(crate) async fn forget_events_before<C: ConnectionTrait>(
    db: &C,
    cutoff: DateTime<Utc>,
) -> Result<u64, DbErr> {
    Ok(provider_event::Entity::delete_many()
        .filter(provider_event::Column::ReceivedAt.lt(cutoff))
        .exec(db)
        .await?
        .rows_affected)
}

/// Contacts per consent state (the kept entries of erased people included), for
/// `signup_consent_state`.
pub(crate) async fn counts<C: ConnectionTrait>(db: &C) -> Result<Vec<(ConsentState, i64)>, DbErr> {
    use sea_orm::QuerySelect;
    use sea_orm::sea_query::{Expr, Func};
    let rows: Vec<(String, i64)> = consent::Entity::find()
        .select_only()
        .column(consent::Column::State)
        .column_as(
            Expr::from(Func::count(Expr::col(consent::Column::Contact))),
            "n",
        )
        .group_by(consent::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ConsentState::ALL
        .into_iter()
        .map(|state| {
            let n = rows
                .iter()
                .find(|(name, _)| name == state.as_str())
                .map_or(0, |(_, n)| *n);
            (state, n)
        })
        .collect())
}

/// A contact's consent as the registration view shows it (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Consent {
    /// None until the provider says anything.
    pub(crate) state: Option<ConsentState>,
    pub(crate) changed_at: Option<DateTime<Utc>>,
    pub(crate) source: Option<Source>,
}

impl Consent {
    /// Nothing said yet.
    pub(crate) fn unknown() -> Self {
        Consent {
            state: None,
            changed_at: None,
            source: None,
        }
    }

    /// One line for a page: `unsubscribed since 2027-01-15 08:00:00 UTC (provider event)`.
    pub(crate) fn describe(&self) -> String {
        match (self.state, self.changed_at, self.source) {
            (Some(state), Some(at), Some(source)) => format!(
                "{} since {} UTC ({})",
                state.as_str(),
                at.format("%Y-%m-%d %H:%M:%S"),
                source.as_str()
            ),
            _ => "not known yet (the provider has said nothing)".to_owned(),
        }
    }
}

/// The consent of the person registered with `email` (as typed).
pub(crate) async fn of<C: ConnectionTrait>(
    db: &C,
    key: &ContactKey,
    email: &str,
) -> Result<Consent, DbErr> {
    of_contact(db, &key.of(&crate::domain::normalized_email(email))).await
}

/// The consent of `contact` (a [`ContactKey`] hash): an erased person's kept entry too.
pub(crate) async fn of_contact<C: ConnectionTrait>(
    db: &C,
    contact: &str,
) -> Result<Consent, DbErr> {
    let row = consent::Entity::find_by_id(contact.to_owned())
        .one(db)
        .await?;
    Ok(match row {
        Some(row) => Consent {
            state: ConsentState::parse(&row.state),
            changed_at: Some(row.changed_at),
            source: Source::parse(&row.source),
        },
        None => Consent::unknown(),
    })
}
