//! The rows of a request as the provider adapter takes them, and what is read for them.

use super::*;

/// What the provider adapter gets of `claims`: each row, and for a deletion the last upsert of
/// its user, which a provider that imports asynchronously may still be applying (SPEC §6).
/// If that cannot be read, the deletion assumes an upsert may have just been sent: "not found"
/// is then retried rather than taken as gone.
/// Of the claimed `rows`, the upserts of addresses whose person declined (SPEC §8).
pub(super) async fn declined_of(
    db: &DatabaseConnection,
    rows: &[Claimed],
) -> Result<HashMap<uuid::Uuid, &'static str>, sea_orm::DbErr> {
    let upserts: Vec<&str> = rows
        .iter()
        .filter(|c| c.row.event == entity::email_outbox::EventType::UserRegistered)
        .filter_map(|c| c.row.contact.as_deref())
        .collect();
    let declined = crate::consent::store::declined(db, &upserts).await?;
    Ok(rows
        .iter()
        .filter(|c| c.row.event == entity::email_outbox::EventType::UserRegistered)
        .filter_map(|c| {
            let state = declined.get(c.row.contact.as_deref()?)?;
            Some((c.row.id, state.as_str()))
        })
        .collect())
}

/// The rows of a request as the provider adapter takes them: a deletion with the last upsert
/// of its contact that may still be landing, an upsert with its contact's declined state.
pub(super) async fn deliveries(
    db: &DatabaseConnection,
    claims: &[Claimed],
    lease: Duration,
    declined: &HashMap<uuid::Uuid, &'static str>,
) -> Vec<Delivery> {
    let mut rows = Vec::with_capacity(claims.len());
    for claimed in claims {
        let row = &claimed.row;
        let upsert = match row.event {
            entity::email_outbox::EventType::UserDeleted => {
                match outbox::last_upsert(db, row.user_id, lease).await {
                    Ok(upsert) => upsert,
                    Err(e) => {
                        tracing::warn!(outbox_id = %row.id, error = %e, "cannot read the erased user's last upsert; a provider's \"not found\" is retried");
                        Some(crate::email::import::EarlierUpsert {
                            job: None,
                            may_land_until: Utc::now(),
                        })
                    }
                }
            }
            _ => None,
        };
        rows.push(Delivery {
            id: row.id,
            event: row.event,
            payload: row.payload.clone(),
            upsert,
            suppressed: declined.get(&row.id).copied(),
            trace: row
                .traceparent
                .as_deref()
                .and_then(crate::telemetry::trace::TraceParent::parse),
        });
    }
    rows
}
