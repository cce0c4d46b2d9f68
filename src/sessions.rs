//! Operator console sessions, stored (SPEC §7). The cookie is signed and names a session; this
//! table says whether the session still holds, for every instance on the database: signing
//! out revokes it everywhere at once, and an expired or revoked session opens nothing whatever
//! its cookie says. Rows hold a hash of the session id, never the id itself.

use chrono::{DateTime, SubsecRound, Utc};
use entity::console_session;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter,
};
use sha2::{Digest, Sha256};

/// How stale `last_seen_at` may get before a request refreshes it (a write per console page
/// view would take SQLite's one write lock for nothing).
const SEEN_EVERY: chrono::Duration = chrono::Duration::minutes(5);

fn key(session: &str) -> String {
    Sha256::digest(session.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Records a new session, valid until `expires_at`; sessions expired for a day are swept.
pub(crate) async fn open(
    db: &DatabaseConnection,
    session: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let now = now.trunc_subsecs(6);
    console_session::Entity::delete_many()
        .filter(console_session::Column::ExpiresAt.lt(now - chrono::Duration::days(1)))
        .exec(db)
        .await?;
    console_session::ActiveModel {
        id: Set(key(session)),
        created_at: Set(now),
        last_seen_at: Set(now),
        expires_at: Set(expires_at.trunc_subsecs(6)),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Whether `session` is open at `now`: recorded, not revoked, not expired. Refreshes its
/// `last_seen_at` now and then.
pub(crate) async fn is_open(
    db: &DatabaseConnection,
    session: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let id = key(session);
    let Some(row) = console_session::Entity::find_by_id(id.clone())
        .one(db)
        .await?
    else {
        return Ok(false);
    };
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Ok(false);
    }
    if now - row.last_seen_at > SEEN_EVERY {
        console_session::Entity::update_many()
            .col_expr(
                console_session::Column::LastSeenAt,
                Expr::value(now.trunc_subsecs(6)),
            )
            .filter(console_session::Column::Id.eq(id))
            .exec(db)
            .await?;
    }
    Ok(true)
}

/// Ends `session` on every instance.
pub(crate) async fn revoke(
    db: &DatabaseConnection,
    session: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    console_session::Entity::update_many()
        .col_expr(
            console_session::Column::RevokedAt,
            Expr::value(Some(now.trunc_subsecs(6))),
        )
        .filter(console_session::Column::Id.eq(key(session)))
        .exec(db)
        .await?;
    Ok(())
}
