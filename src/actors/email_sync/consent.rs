//! What the provider's answers say about consent (SPEC §8), recorded off the outcome write.

use super::*;

impl EmailSyncActor {
    /// The provider's answer about the person of `claimed` says `state` (SPEC §8, source
    /// `provider answer`): recorded unless a newer statement stands (`pending` only where
    /// nothing was said yet).
    pub(super) fn record_answer(
        &self,
        claimed: &Claimed,
        state: crate::consent::ConsentState,
        ctx: &mut Context<Self>,
    ) {
        let Some(contact) = claimed.row.contact.clone() else {
            return;
        };
        let (db, turns, kind) = (self.db.clone(), self.turns.clone(), self.settings.kind);
        let record = async move {
            let written = turns
                .run(
                    Writes::Deliveries,
                    crate::consent::store::set_from_answer(
                        &db,
                        contact,
                        state,
                        kind.as_str(),
                        Utc::now(),
                    ),
                )
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot record the provider's answer as consent; the row is done all the same");
            }
        };
        ctx.spawn(record.into_actor(self));
    }

    /// Mailchimp asked these contacts to confirm: `pending` where nothing was said yet.
    pub(super) fn record_asked(&self, contacts: Vec<String>, ctx: &mut Context<Self>) {
        let (db, turns) = (self.db.clone(), self.turns.clone());
        let record = async move {
            let written = turns
                .run(
                    Writes::Deliveries,
                    crate::consent::store::pending_where_unknown(&db, &contacts, Utc::now()),
                )
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot record the double opt-in as pending; the rows are done all the same");
            }
        };
        ctx.spawn(record.into_actor(self));
    }
}
