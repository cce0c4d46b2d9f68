//! One event at a time: what each does to the instances, and the actions carried out.

use super::*;

impl Sim {
    pub(super) fn step(&mut self, event: Event) -> Result<(), Failure> {
        // An event of an instance's earlier life (before a crash or exit) is dropped.
        if let Some((instance, epoch)) = event.owner()
            && !self.alive(instance, epoch)
        {
            return Ok(());
        }
        match event {
            Event::Tick { instance, .. } => {
                let actions = self.instances[instance].core.tick(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::Poll { instance, epoch } => {
                self.schedule(self.config.poll, Event::Poll { instance, epoch });
                let actions = self.instances[instance].core.tick(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ClaimRuns {
                instance,
                epoch,
                limit,
            } => {
                let rows = self.claim(limit);
                self.note(format!("i{instance} claims {} rows", rows.len()));
                let back = self.db_latency();
                self.schedule(
                    back,
                    Event::ClaimReturns {
                        instance,
                        epoch,
                        rows,
                    },
                );
            }
            Event::ClaimReturns { instance, rows, .. } => {
                let actions = self.instances[instance].core.claimed(rows, at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ProviderDone { request } => self.provider_done(request),
            Event::Answer {
                instance,
                id,
                outcomes,
                ..
            } => {
                self.note(format!("i{instance} answered {id:?}: {outcomes:?}"));
                let actions = self.instances[instance]
                    .core
                    .answered(id, outcomes, at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::StoreRuns {
                instance,
                epoch,
                batch,
            } => {
                self.store(&batch)?;
                let back = self.db_latency();
                self.schedule(back, Event::Stored { instance, epoch });
            }
            Event::Stored { instance, .. } => {
                let actions = self.instances[instance].core.stored(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ReleaseRuns {
                instance,
                epoch,
                rows,
            } => {
                for claimed in rows {
                    if let Some(row) = self.rows.iter_mut().find(|r| r.id == claimed.row.id)
                        && row.locked_until == Some(claimed.lease)
                    {
                        row.locked_until = None;
                    }
                }
                let back = self.db_latency();
                self.schedule(back, Event::Released { instance, epoch });
            }
            Event::Released { instance, .. } => {
                let actions = self.instances[instance].core.released();
                self.carry_out(instance, actions)?;
            }
            Event::Crash { instance } => {
                if self.instances[instance].up {
                    self.note(format!("i{instance} crashes"));
                    self.instances[instance].up = false;
                    self.instances[instance].epoch += 1;
                    let down = self.rng.random_range(0..20_000);
                    self.schedule(down, Event::Restart { instance });
                }
            }
            Event::Drain { instance } => {
                let node = &mut self.instances[instance];
                if node.up && !node.draining {
                    node.draining = true;
                    let epoch = node.epoch;
                    self.note(format!("i{instance} drains"));
                    let actions = self.instances[instance].core.drain();
                    let grace = self.rng.random_range(0..15_000);
                    self.schedule(grace, Event::CancelAll { instance, epoch });
                    self.schedule(grace + 10_000, Event::DrainDeadline { instance, epoch });
                    self.carry_out(instance, actions)?;
                }
            }
            Event::CancelAll { instance, .. } => {
                let actions = self.instances[instance].core.cancel_all();
                self.carry_out(instance, actions)?;
            }
            // Still alive (the check above), so the drain did not end.
            Event::DrainDeadline { instance, .. } => {
                return Err(self.fail(format!(
                    "i{instance}'s drain is not over 10 s after its grace ended"
                )));
            }
            Event::Restart { instance } => {
                if !self.instances[instance].up {
                    self.note(format!("i{instance} restarts"));
                    let core = Core::new(self.config.core.clone());
                    let node = &mut self.instances[instance];
                    node.core = core;
                    node.sent_since_closed = 0;
                    node.up = true;
                    node.draining = false;
                    let epoch = node.epoch;
                    self.schedule(0, Event::Poll { instance, epoch });
                }
            }
            Event::Register => {
                let contact = self.next_user + 1000;
                self.register(contact);
            }
            Event::RegisterAgain => {
                if !self.erased.is_empty() {
                    let pick = self.rng.random_range(0..self.erased.len());
                    let contact = self.erased.swap_remove(pick);
                    self.register(contact);
                }
            }
            Event::ConsentChange => {
                let users: Vec<(u32, u32)> = self.live.iter().map(|(u, c)| (*u, *c)).collect();
                if !users.is_empty() {
                    let (user, contact) = users[self.rng.random_range(0..users.len())];
                    self.write_row(user, contact, EventType::UserConsentChanged);
                    self.note(format!("user {user}'s consent changed (contact {contact})"));
                    self.wake_someone();
                }
            }
            Event::Erase => {
                let users: Vec<u32> = self.live.keys().copied().collect();
                if !users.is_empty() {
                    let user = users[self.rng.random_range(0..users.len())];
                    self.erase(user);
                }
            }
            Event::OperatorRetry => {
                let now = self.now;
                // A dead row no later row of its contact has overtaken (reviving an old
                // deletion after the address was registered again is an operator's call the
                // simulation does not make).
                let last_of_contact: HashMap<u32, usize> =
                    self.rows.iter().map(|r| (r.contact, r.written)).collect();
                for row in self.rows.iter_mut().filter(|r| {
                    r.status == Status::Dead && last_of_contact[&r.contact] == r.written
                }) {
                    row.status = Status::Pending;
                    row.attempts = 0;
                    row.sent_since_reset = 0;
                    row.next_attempt_at = now;
                    row.retry_from = Some(now);
                }
                self.wake_someone();
            }
        }
        Ok(())
    }

    pub(super) fn carry_out(&mut self, instance: usize, actions: Actions) -> Result<(), Failure> {
        let epoch = self.instances[instance].epoch;
        // What the chaos set going (a stalled claim, an answer that comes after the lease, which
        // holds the rows queued behind it) may make claims stale for a while after it ended.
        let core = &self.config.core;
        let calm_from =
            self.chaos_until + self.config.db_stall + ms_of(core.timeout) + 2 * ms_of(core.lease);
        if self.now > calm_from {
            self.stale_after_chaos += actions.stale;
        }
        for (before, after) in &actions.circuit {
            self.note(format!(
                "i{instance} circuit {} -> {}",
                before.as_str(),
                after.as_str()
            ));
            if *after == CircuitState::Open {
                self.instances[instance].sent_since_closed = 0;
            }
        }
        if let Some(limit) = actions.claim {
            let wait = self.db_latency();
            self.schedule(
                wait,
                Event::ClaimRuns {
                    instance,
                    epoch,
                    limit,
                },
            );
        }
        for request in actions.send {
            self.send(instance, epoch, request.id, request.rows)?;
        }
        for rows in actions.release {
            let wait = self.db_latency();
            self.schedule(
                wait,
                Event::ReleaseRuns {
                    instance,
                    epoch,
                    rows,
                },
            );
        }
        if let Some(batch) = actions.store {
            let wait = self.db_latency();
            self.schedule(
                wait,
                Event::StoreRuns {
                    instance,
                    epoch,
                    batch,
                },
            );
        }
        for id in actions.cancel {
            // The shell aborts the request: its connection closes, the provider's side of it
            // ends now (having applied it or not), and the core hears it was cancelled.
            if let Some(request) = self.request_of.remove(&(instance, epoch, id)) {
                self.provider_done(request);
            }
            self.schedule(
                0,
                Event::Answer {
                    instance,
                    epoch,
                    id,
                    outcomes: None,
                },
            );
        }
        if let Some(when) = actions.wake_at {
            let after = ms_at(when) - self.now;
            self.schedule(after.max(1), Event::Tick { instance, epoch });
        }
        if actions.drained {
            // The process exits once its drain is over, and is started again later.
            self.note(format!("i{instance} drained, exits"));
            let node = &mut self.instances[instance];
            node.up = false;
            node.epoch += 1;
            let down = self.rng.random_range(0..20_000);
            self.schedule(down, Event::Restart { instance });
        }
        Ok(())
    }
}
