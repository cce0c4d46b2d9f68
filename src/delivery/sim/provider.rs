//! The simulated provider: where requests arrive, are checked against SPEC §3.5, and answered.

use super::*;

impl Sim {
    /// A request ends at the provider, which applies what it applies.
    pub(super) fn provider_done(&mut self, request: u64) {
        let Some(done) = self.at_provider.remove(&request) else {
            return;
        };
        // The request is over: its permit goes back, unless its instance died meanwhile (the
        // slot then comes back when its lease passes).
        if let Some(Some(((instance, epoch), _))) = self.slots.get(done.slot).copied()
            && self.alive(instance, epoch)
        {
            self.slots[done.slot] = None;
        }
        for (id, applies) in &done.rows {
            if let Some(open) = self.open.get_mut(id) {
                *open -= 1;
            }
            if *applies
                && let Some(row) = self.rows.iter().find(|r| r.id == *id)
                && row.event != EventType::UserConsentChanged
            {
                let present = row.event == EventType::UserRegistered;
                self.contacts.insert(row.contact, present);
            }
        }
    }
    /// A request leaves an instance: the invariants that hold at the provider's door.
    pub(super) fn send(
        &mut self,
        instance: usize,
        epoch: u32,
        id: RequestId,
        rows: Vec<Claimed>,
    ) -> Result<(), Failure> {
        let now = at(self.now);
        for claimed in &rows {
            // The core sends only what its lease covers for the whole timeout.
            if !super::super::core::may_send(claimed.lease, now, self.config.core.timeout) {
                return Err(self.fail(format!(
                    "row {} sent with a lease too short",
                    claimed.row.id
                )));
            }
        }
        let chaotic = self.chaotic();
        // The provider's pause (the gate in front of it) holds some requests back unsent.
        if chaotic && self.rng.random_bool(0.05) {
            let retry_after = Duration::from_millis(self.rng.random_range(0..5000));
            self.not_sent(instance, epoch, id, retry_after);
            return Ok(());
        }
        // SPEC §3.6: one budget for all instances. A request goes only with one of the
        // `max_in_flight` slots shared by every instance, leased for `lease` and used only if
        // the request is over before that lease is; a slot whose holder died comes back when
        // its lease passes. None free: the request is not sent (no attempt), as when the
        // leases of its rows would end before one came.
        let now_at = at(self.now);
        let Some(slot) = self.slots.iter().position(|held| {
            held.is_none_or(|(_, until)| crate::budget::slot_is_free(Some(at(until)), now_at))
        }) else {
            self.not_sent(instance, epoch, id, Duration::from_millis(250));
            return Ok(());
        };
        let until = self.now + ms_of(self.config.core.lease);
        if !crate::budget::slot_covers(at(until), now_at, self.config.core.timeout) {
            return Err(self.fail(format!(
                "i{instance} would send on a slot whose lease ends before its request could"
            )));
        }
        // §3.6: never more than max_in_flight at the provider, all instances together (a dead
        // instance's requests included, until they end).
        let max = self.config.core.max_requests;
        if self.at_provider.len() >= max {
            return Err(self.fail(format!(
                "i{instance} sends while {} requests of all instances are at the provider (max_in_flight {max})",
                self.at_provider.len()
            )));
        }
        self.slots[slot] = Some(((instance, epoch), until));
        // §3.5.5: the breaker bounds the provider: while open no request, half-open one (the
        // requests sent before it opened may still be out).
        let node = &mut self.instances[instance];
        let state = node.core.circuit();
        let allowed = match state {
            CircuitState::Closed => true,
            CircuitState::HalfOpen => node.sent_since_closed == 0,
            CircuitState::Open => false,
        };
        if state != CircuitState::Closed {
            node.sent_since_closed += 1;
        }
        if !allowed {
            let sent = node.sent_since_closed;
            return Err(self.fail(format!(
                "i{instance} sends with the circuit {}, request {sent} since it left closed",
                state.as_str()
            )));
        }
        for claimed in &rows {
            let row_id = claimed.row.id;
            // §3.5.3: never in two requests at once.
            if self.open.get(&row_id).copied().unwrap_or(0) > 0 {
                return Err(self.fail(format!("row {row_id} is in two requests at once")));
            }
            let Some(row) = self.rows.iter().find(|r| r.id == row_id) else {
                continue;
            };
            // §3.5.2: order per contact.
            if let Some(earlier) = self.rows.iter().find(|e| {
                e.contact == row.contact
                    && e.written < row.written
                    && (e.status == Status::Pending
                        || self.open.get(&e.id).copied().unwrap_or(0) > 0)
            }) {
                return Err(self.fail(format!(
                    "{:?} of user {} (contact {}) sent while an earlier {:?} of user {} is {}",
                    row.event,
                    row.user,
                    row.contact,
                    earlier.event,
                    earlier.user,
                    if earlier.status == Status::Pending {
                        "pending"
                    } else {
                        "at the provider"
                    }
                )));
            }
        }
        for claimed in &rows {
            *self.open.entry(claimed.row.id).or_insert(0) += 1;
            if let Some(row) = self.rows.iter_mut().find(|r| r.id == claimed.row.id) {
                row.sent_since_reset += 1;
            }
        }
        let timeout = ms_of(self.config.core.timeout);
        let latency = if chaotic {
            self.rng.random_range(0..=timeout * 3 / 2)
        } else {
            self.rng.random_range(0..=100.min(timeout))
        };
        let timed_out = latency > timeout;
        let outcome = if timed_out {
            AttemptOutcome::Transient {
                status: None,
                error: "timed out".into(),
                retry_after: None,
            }
        } else if chaotic {
            self.random_answer()
        } else {
            AttemptOutcome::delivered(200)
        };
        // Batches: each row's own outcome, or one for all.
        let outcomes = if rows.len() > 1 && chaotic && !timed_out && self.rng.random_bool(0.3) {
            (0..rows.len()).map(|_| self.random_answer()).collect()
        } else {
            vec![outcome; rows.len()]
        };
        // What the provider does with each row: a delivered row is applied, a refused one
        // not, a timed-out one maybe.
        let applies: Vec<bool> = outcomes
            .iter()
            .map(|outcome| match outcome {
                AttemptOutcome::Delivered { .. } => true,
                _ if timed_out => self.rng.random_bool(0.5),
                _ => false,
            })
            .collect();
        let request = self.next_provider_request;
        self.next_provider_request += 1;
        self.request_of.insert((instance, epoch, id), request);
        let ids: Vec<Uuid> = rows.iter().map(|c| c.row.id).collect();
        self.note(format!("i{instance} sends {ids:?}, ends in {latency}ms"));
        let rows = ids.into_iter().zip(applies).collect();
        self.at_provider.insert(request, AtProvider { rows, slot });
        let ends = latency.min(timeout);
        self.schedule(ends, Event::ProviderDone { request });
        // The answer may reach the core late (a busy Arbiter), even after the lease.
        let late = if chaotic && self.rng.random_bool(0.1) {
            self.rng.random_range(0..ms_of(self.config.core.lease) * 2)
        } else {
            self.rng.random_range(0..20)
        };
        self.schedule(
            ends + late,
            Event::Answer {
                instance,
                epoch,
                id,
                outcomes: Some(outcomes),
            },
        );
        Ok(())
    }

    /// Answers request `id` at once: not sent, due again after `retry_after` (no attempt).
    fn not_sent(&mut self, instance: usize, epoch: u32, id: RequestId, retry_after: Duration) {
        self.schedule(
            0,
            Event::Answer {
                instance,
                epoch,
                id,
                outcomes: Some(vec![AttemptOutcome::NotSent { retry_after }]),
            },
        );
    }

    pub(super) fn random_answer(&mut self) -> AttemptOutcome {
        match self.rng.random_range(0..11) {
            0..=3 => AttemptOutcome::delivered(200),
            // An import still running: the provider is up, the row waits.
            10 => AttemptOutcome::NotYet {
                status: 404,
                error: "not imported yet".into(),
                retry_after: Some(Duration::from_secs(10)),
            },
            4 => AttemptOutcome::Permanent {
                status: Some([400, 409, 422][self.rng.random_range(0..3)]),
                error: "refused".into(),
            },
            5 => AttemptOutcome::Transient {
                status: Some(429),
                error: "rate limited".into(),
                retry_after: Some(Duration::from_millis(self.rng.random_range(0..10_000))),
            },
            6 => AttemptOutcome::Misconfigured {
                status: Some([401, 403, 404, 410][self.rng.random_range(0..4)]),
                error: "check the key".into(),
            },
            _ => AttemptOutcome::Transient {
                status: Some([500, 502, 503, 408][self.rng.random_range(0..4)]),
                error: "unavailable".into(),
                retry_after: None,
            },
        }
    }
}
