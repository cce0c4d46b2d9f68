//! The modelled outbox: rows, the claim statement, the outcome write, erasures.

use super::*;

/// A row of the modelled outbox.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) id: Uuid,
    pub(super) user: u32,
    pub(super) contact: u32,
    /// Write order across the whole outbox.
    pub(super) written: usize,
    pub(super) event: EventType,
    pub(super) status: Status,
    pub(super) attempts: i32,
    pub(super) next_attempt_at: Ms,
    pub(super) locked_until: Option<DateTime<Utc>>,
    pub(super) created_at: Ms,
    pub(super) retry_from: Option<Ms>,
    /// Requests about this row that reached the provider since the last operator retry.
    pub(super) sent_since_reset: i32,
}

impl Row {
    pub(super) fn model(&self) -> email_outbox::Model {
        email_outbox::Model {
            id: self.id,
            user_id: Uuid::from_u128(u128::from(self.user)),
            payload: "{}".into(),
            status: self.status,
            attempts: self.attempts,
            next_attempt_at: at(self.next_attempt_at),
            locked_until: self.locked_until,
            last_error: None,
            last_status: None,
            created_at: at(self.created_at),
            delivered_at: None,
            retry_from: self.retry_from.map(at),
            event: self.event,
            seq: 1,
            contact: Some(self.contact.to_string()),
            claimed_at: None,
            provider_job: None,
            traceparent: None,
        }
    }
}

impl Sim {
    pub(super) fn register(&mut self, contact: u32) {
        let user = self.next_user;
        self.next_user += 1;
        self.live.insert(user, contact);
        self.write_row(user, contact, EventType::UserRegistered);
        self.note(format!("user {user} registers contact {contact}"));
        self.wake_someone();
    }

    /// SPEC §6: the user's undelivered rows are cancelled, a deletion row is written.
    pub(super) fn erase(&mut self, user: u32) {
        let Some(contact) = self.live.remove(&user) else {
            return;
        };
        for row in self.rows.iter_mut().filter(|r| r.user == user) {
            if row.status == Status::Pending || row.status == Status::Dead {
                row.status = Status::Cancelled;
            }
        }
        self.write_row(user, contact, EventType::UserDeleted);
        self.erased.push(contact);
        self.note(format!("user {user} erased (contact {contact})"));
        self.wake_someone();
    }

    pub(super) fn write_row(&mut self, user: u32, contact: u32, event: EventType) {
        let written = self.rows.len();
        self.rows.push(Row {
            id: Uuid::from_u128(written as u128 + 1),
            user,
            contact,
            written,
            event,
            status: Status::Pending,
            attempts: 0,
            next_attempt_at: self.now,
            locked_until: None,
            created_at: self.now,
            retry_from: None,
            sent_since_reset: 0,
        });
    }

    /// The claim statement: due rows, oldest due first, none while an earlier row of its user
    /// or an earlier deletion about its contact is pending or leased by anyone.
    pub(super) fn claim(&mut self, limit: usize) -> Vec<Claimed> {
        let now = at(self.now);
        let lease = now + self.config.core.lease;
        let free = |r: &Row| r.locked_until.is_none_or(|until| until <= now);
        let blocked = |r: &Row| {
            self.rows.iter().any(|e| {
                (e.user == r.user || (e.contact == r.contact && e.event == EventType::UserDeleted))
                    && e.written < r.written
                    && (e.status == Status::Pending || !free(e))
            })
        };
        let mut due: Vec<usize> = (0..self.rows.len())
            .filter(|i| {
                let r = &self.rows[*i];
                r.status == Status::Pending
                    && r.next_attempt_at <= self.now
                    && free(r)
                    && !blocked(r)
            })
            .collect();
        due.sort_by_key(|i| (self.rows[*i].next_attempt_at, self.rows[*i].written));
        due.truncate(limit);
        due.into_iter()
            .map(|i| {
                self.rows[i].locked_until = Some(lease);
                Claimed {
                    row: self.rows[i].model(),
                    lease,
                }
            })
            .collect()
    }

    /// The outcome write: each row only if its claim still holds; a cancelled row's lease is
    /// let go of.
    pub(super) fn store(&mut self, batch: &[Finished]) -> Result<(), Failure> {
        for finished in batch {
            let Some(place) = self
                .rows
                .iter()
                .position(|r| r.id == finished.claimed.row.id)
            else {
                continue;
            };
            let row = &mut self.rows[place];
            if row.locked_until != Some(finished.claimed.lease) {
                continue;
            }
            row.locked_until = None;
            if row.status != Status::Pending {
                continue;
            }
            row.attempts = finished.attempts;
            match &finished.completion {
                Completion::Delivered { .. } | Completion::Suppressed { .. } => {
                    row.status = Status::Delivered
                }
                Completion::Dead { .. } => row.status = Status::Dead,
                Completion::Retry { at: when, .. } | Completion::Deferred { at: when } => {
                    row.next_attempt_at = ms_at(*when);
                }
            }
            // Attempts are real (§3.5.4): never more than the requests that reached the provider.
            if row.attempts > row.sent_since_reset {
                let what = format!(
                    "row {} counts {} attempts but only {} requests reached the provider",
                    row.id, row.attempts, row.sent_since_reset
                );
                return Err(self.fail(what));
            }
        }
        Ok(())
    }
}
