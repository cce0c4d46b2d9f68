//! Deterministic simulation of the delivery side (FoundationDB's simulation testing,
//! TigerBeetle's VOPR): the real [`Core`] of several instances, against a model of the outbox
//! (claims, leases, outcome writes, erasures and re-registrations, operator retries) and of
//! the provider (every answer class, 429 with a reset, timeouts, slow answers), with crashes and
//! drains at any step. One seeded RNG decides everything, so a failure is a seed:
//! `SIGNUP_SIM_SEED=<n> cargo test sim` replays it exactly; `SIGNUP_SIM_SCHEDULES=<n>` sets how
//! many schedules `cargo test` walks (2 000 by default; CI walks 20 000).
//!
//! After every event the SPEC §3.5 invariants are checked; at the end, progress: once the
//! provider answers 2xx and the instances are up, every row ends delivered, dead or cancelled
//! within a bound, and the provider's contacts are what the last event about each said.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::email_outbox::{self, EventType, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::core::{Actions, Core, CoreSettings, RequestId};
use crate::email::circuit_breaker::CircuitBreakerSettings;
use crate::email::retry::RetrySettings;
use crate::email::{AttemptOutcome, CircuitState};
use crate::outbox::{Claimed, Completion, Finished};

/// Which rows must wait for an earlier one: SPEC §6 says per provider contact (the email).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderBy {
    Contact,
}
const ORDER_BY: OrderBy = OrderBy::Contact;

/// Events one schedule may take: a schedule settles in a few thousand; far more is a loop
/// that makes no progress (a claim or a tick that asks for itself again at once).
const MAX_STEPS: u32 = 200_000;

/// Simulated milliseconds.
type Ms = i64;

fn at(ms: Ms) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(1_700_000_000_000 + ms)
}

fn ms_of(d: Duration) -> Ms {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_at(t: DateTime<Utc>) -> Ms {
    (t - at(0)).num_milliseconds()
}

/// A row of the modelled outbox.
#[derive(Debug, Clone)]
struct Row {
    id: Uuid,
    user: u32,
    contact: u32,
    /// Write order across the whole outbox.
    written: usize,
    event: EventType,
    status: Status,
    attempts: i32,
    next_attempt_at: Ms,
    locked_until: Option<DateTime<Utc>>,
    created_at: Ms,
    retry_from: Option<Ms>,
    /// Requests about this row that reached the provider since the last operator retry.
    sent_since_reset: i32,
}

impl Row {
    fn model(&self) -> email_outbox::Model {
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
        }
    }
}

/// What the simulation's instances and provider may be told to do.
#[derive(Debug, Clone)]
enum Event {
    /// A wake-up, or a `wake_at` coming due.
    Tick {
        instance: usize,
        epoch: u32,
    },
    /// The poll timer: a tick, and the next poll.
    Poll {
        instance: usize,
        epoch: u32,
    },
    /// The claim statement runs (after its write turn).
    ClaimRuns {
        instance: usize,
        epoch: u32,
        limit: usize,
    },
    ClaimReturns {
        instance: usize,
        epoch: u32,
        rows: Vec<Claimed>,
    },
    /// A request's effect at the provider and its end there.
    ProviderDone {
        request: u64,
    },
    Answer {
        instance: usize,
        epoch: u32,
        id: RequestId,
        outcomes: Option<Vec<AttemptOutcome>>,
    },
    StoreRuns {
        instance: usize,
        epoch: u32,
        batch: Vec<Finished>,
    },
    Stored {
        instance: usize,
        epoch: u32,
    },
    ReleaseRuns {
        instance: usize,
        epoch: u32,
        rows: Vec<Claimed>,
    },
    Released {
        instance: usize,
        epoch: u32,
    },
    Crash {
        instance: usize,
    },
    Drain {
        instance: usize,
    },
    CancelAll {
        instance: usize,
        epoch: u32,
    },
    /// A drain must be over by now: its requests were cancelled at the grace's end.
    DrainDeadline {
        instance: usize,
        epoch: u32,
    },
    Restart {
        instance: usize,
    },
    Register,
    Erase,
    RegisterAgain,
    OperatorRetry,
}

/// A request at the provider.
#[derive(Debug)]
struct AtProvider {
    /// Each row, and whether the provider applies it when the request ends (a timed-out
    /// request may or may not be).
    rows: Vec<(Uuid, bool)>,
}

struct Instance {
    core: Core,
    up: bool,
    /// Bumped at each crash: events of an earlier life are dropped.
    epoch: u32,
    draining: bool,
    /// Requests sent since the circuit last left `closed`.
    sent_since_closed: usize,
}

/// One schedule's configuration, drawn from what start-up accepts.
#[derive(Debug, Clone)]
struct Config {
    core: CoreSettings,
    poll: Ms,
    instances: usize,
    /// Longest time a database statement takes while the run is chaotic.
    db_stall: Ms,
}

fn draw_config(rng: &mut StdRng) -> Config {
    let timeout = Duration::from_millis(rng.random_range(1..=10) * 1000);
    let lease = match rng.random_range(0..3) {
        // The shortest lease start-up accepts: the one that used to deliver nothing.
        0 => timeout + super::CLAIM_SLACK,
        1 => timeout + super::CLAIM_SLACK + Duration::from_millis(rng.random_range(0..5000)),
        _ => timeout * rng.random_range(2..=4) + super::CLAIM_SLACK,
    };
    assert!(super::lease_accepted(lease, timeout));
    let open_for = Duration::from_millis(rng.random_range(1..=10) * 1000);
    let initial = Duration::from_millis(rng.random_range(1..=5) * 1000);
    let max_interval = initial * rng.random_range(1..=12);
    Config {
        core: CoreSettings {
            max_requests: rng.random_range(1..=4),
            batch: rng.random_range(1..=5),
            timeout,
            lease,
            retry: RetrySettings {
                initial_interval: initial,
                multiplier: [1.0, 1.5, 2.0, 3.0][rng.random_range(0..4)],
                // Jitter would draw from the thread's RNG, not the seed's.
                randomization: 0.0,
                max_interval,
                max_attempts: rng.random_range(2..=10),
                max_elapsed: Duration::from_secs(rng.random_range(60..=3600)),
            },
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: NonZeroU32::new(rng.random_range(1..=5))
                    .unwrap_or(NonZeroU32::MIN),
                open_for,
                max_open_for: open_for * rng.random_range(1..=4),
            },
            one_writer: rng.random_bool(0.5),
        },
        poll: rng.random_range(1..=5) * 1000,
        instances: rng.random_range(1..=3),
        db_stall: [0, 200, 900, 3000][rng.random_range(0..4)],
    }
}

struct Sim {
    rng: StdRng,
    config: Config,
    now: Ms,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    rows: Vec<Row>,
    instances: Vec<Instance>,
    at_provider: HashMap<u64, AtProvider>,
    next_provider_request: u64,
    /// Which provider request each instance's request is.
    request_of: HashMap<(usize, u32, RequestId), u64>,
    /// Requests at the provider now, per row.
    open: HashMap<Uuid, usize>,
    /// What the provider holds: contact → present.
    contacts: HashMap<u32, bool>,
    /// Users registered and not erased: user → contact.
    live: BTreeMap<u32, u32>,
    /// Contacts whose user was erased (free to register again).
    erased: Vec<u32>,
    next_user: u32,
    /// Until then answers are random and instances crash; after it, the provider answers 2xx.
    chaos_until: Ms,
    /// Releases of rows whose lease was too short to send them, after the chaos.
    stale_after_chaos: usize,
    log: Vec<String>,
}

/// Why a schedule failed, with its last steps.
#[derive(Debug)]
struct Failure {
    what: String,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = draw_config(&mut rng);
        let instances = (0..config.instances)
            .map(|_| Instance {
                core: Core::new(config.core.clone()),
                up: true,
                epoch: 0,
                draining: false,
                sent_since_closed: 0,
            })
            .collect();
        let chaos_until = rng.random_range(10_000..120_000);
        Self {
            rng,
            config,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            rows: Vec::new(),
            instances,
            at_provider: HashMap::new(),
            next_provider_request: 0,
            request_of: HashMap::new(),
            open: HashMap::new(),
            contacts: HashMap::new(),
            live: BTreeMap::new(),
            erased: Vec::new(),
            next_user: 0,
            chaos_until,
            stale_after_chaos: 0,
            log: Vec::new(),
        }
    }

    fn chaotic(&self) -> bool {
        self.now < self.chaos_until
    }

    fn schedule(&mut self, after: Ms, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((self.now + after.max(0), id)));
    }

    /// How long a database statement takes: short once the chaos is over (well within
    /// `CLAIM_SLACK`), up to `db_stall` before.
    fn db_latency(&mut self) -> Ms {
        let most = if self.chaotic() {
            self.config.db_stall.max(1)
        } else {
            100
        };
        self.rng.random_range(0..=most) / 2
    }

    fn note(&mut self, line: String) {
        if self.log.len() >= 60 {
            self.log.remove(0);
        }
        self.log.push(format!("t={}ms {line}", self.now));
    }

    fn fail(&self, what: String) -> Failure {
        Failure {
            what,
            log: self.log.clone(),
        }
    }

    fn run(mut self) -> Result<Vec<String>, Failure> {
        let instances = self.instances.len();
        for instance in 0..instances {
            self.schedule(self.config.poll, Event::Poll { instance, epoch: 0 });
        }
        // The workload, all within the chaos.
        let registrations = self.rng.random_range(1..=12);
        for _ in 0..registrations {
            let when = self.rng.random_range(0..self.chaos_until);
            self.schedule(when, Event::Register);
        }
        for _ in 0..self.rng.random_range(0..=4) {
            let when = self.rng.random_range(0..self.chaos_until);
            self.schedule(when, Event::Erase);
            let later = self.rng.random_range(when..=self.chaos_until);
            self.schedule(later, Event::RegisterAgain);
        }
        for _ in 0..self.rng.random_range(0..=2) {
            let when = self.rng.random_range(0..self.chaos_until);
            self.schedule(when, Event::OperatorRetry);
        }
        for instance in 0..instances {
            for _ in 0..self.rng.random_range(0..=2) {
                let when = self.rng.random_range(0..self.chaos_until);
                let stop = if self.rng.random_bool(0.5) {
                    Event::Crash { instance }
                } else {
                    Event::Drain { instance }
                };
                self.schedule(when, stop);
            }
        }
        // Progress: after the chaos (and the restarts it may need), everything settles within
        // what the retry schedule, the breaker and a lease can hold a row back, a few times.
        let core = &self.config.core;
        let bound = self.chaos_until
            + 60_000
            + 4 * (ms_of(core.lease)
                + ms_of(core.circuit_breaker.max_open_for)
                + ms_of(core.retry.max_interval)
                + ms_of(core.timeout)
                + self.config.poll);
        let mut steps = 0_u32;
        while let Some(Reverse((when, id))) = self.queue.pop() {
            if when > bound {
                break;
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Err(self.fail(format!(
                    "livelock: {MAX_STEPS} steps by t={when}ms without settling"
                )));
            }
            self.now = when;
            let Some(event) = self.events.remove(&id) else {
                continue;
            };
            self.step(event)?;
            if !self.chaotic() && self.settled() {
                self.check_end()?;
                return Ok(self.log);
            }
        }
        let unsettled: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| {
                format!(
                    "{:?} attempts {} lease {:?}",
                    r.event,
                    r.attempts,
                    r.locked_until.map(ms_at)
                )
            })
            .collect();
        Err(self.fail(format!(
            "no progress: by t={bound}ms (chaos ended at {}ms) rows still pending: {unsettled:?}; {} releases of stale claims after the chaos",
            self.chaos_until, self.stale_after_chaos
        )))
    }

    fn settled(&self) -> bool {
        self.rows.iter().all(|r| r.status != Status::Pending)
            && self.at_provider.is_empty()
            && self.instances.iter().all(|i| i.up)
    }

    fn check_end(&self) -> Result<(), Failure> {
        if self.stale_after_chaos > 0 {
            return Err(self.fail(format!(
                "{} claims given back as stale after the chaos: a claim whose lease cannot send it",
                self.stale_after_chaos
            )));
        }
        // The provider holds what the last event about each contact said, where every row of
        // that contact was delivered.
        let mut last: HashMap<u32, &Row> = HashMap::new();
        let mut all_delivered: HashMap<u32, bool> = HashMap::new();
        for row in &self.rows {
            let delivered = matches!(row.status, Status::Delivered | Status::Cancelled);
            *all_delivered.entry(row.contact).or_insert(true) &= delivered;
            if row.status == Status::Delivered {
                last.insert(row.contact, row);
            }
        }
        for (contact, row) in last {
            if !all_delivered[&contact] {
                continue;
            }
            let want = row.event == EventType::UserRegistered;
            let has = self.contacts.get(&contact).copied().unwrap_or(false);
            if want != has {
                return Err(self.fail(format!(
                    "contact {contact}: its last event was {:?}, yet the provider {} it",
                    row.event,
                    if has { "holds" } else { "does not hold" }
                )));
            }
        }
        Ok(())
    }

    fn step(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Tick { instance, epoch } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                let actions = self.instances[instance].core.tick(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::Poll { instance, epoch } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                self.schedule(self.config.poll, Event::Poll { instance, epoch });
                let actions = self.instances[instance].core.tick(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ClaimRuns {
                instance,
                epoch,
                limit,
            } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
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
            Event::ClaimReturns {
                instance,
                epoch,
                rows,
            } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                let actions = self.instances[instance].core.claimed(rows, at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ProviderDone { request } => self.provider_done(request),
            Event::Answer {
                instance,
                epoch,
                id,
                outcomes,
            } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
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
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                self.store(&batch)?;
                let back = self.db_latency();
                self.schedule(back, Event::Stored { instance, epoch });
            }
            Event::Stored { instance, epoch } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                let actions = self.instances[instance].core.stored(at(self.now));
                self.carry_out(instance, actions)?;
            }
            Event::ReleaseRuns {
                instance,
                epoch,
                rows,
            } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
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
            Event::Released { instance, epoch } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
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
            Event::CancelAll { instance, epoch } => {
                if !self.alive(instance, epoch) {
                    return Ok(());
                }
                let actions = self.instances[instance].core.cancel_all();
                self.carry_out(instance, actions)?;
            }
            Event::DrainDeadline { instance, epoch } => {
                if self.alive(instance, epoch) {
                    return Err(self.fail(format!(
                        "i{instance}'s drain is not over 10 s after its grace ended"
                    )));
                }
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

    /// A request ends at the provider, which applies what it applies.
    fn provider_done(&mut self, request: u64) {
        let Some(done) = self.at_provider.remove(&request) else {
            return;
        };
        for (id, applies) in &done.rows {
            if let Some(open) = self.open.get_mut(id) {
                *open -= 1;
            }
            if *applies && let Some(row) = self.rows.iter().find(|r| r.id == *id) {
                let present = row.event == EventType::UserRegistered;
                self.contacts.insert(row.contact, present);
            }
        }
    }

    fn alive(&self, instance: usize, epoch: u32) -> bool {
        let node = &self.instances[instance];
        node.up && node.epoch == epoch
    }

    fn wake_someone(&mut self) {
        let instance = self.rng.random_range(0..self.instances.len());
        let epoch = self.instances[instance].epoch;
        self.schedule(0, Event::Tick { instance, epoch });
    }

    fn register(&mut self, contact: u32) {
        let user = self.next_user;
        self.next_user += 1;
        self.live.insert(user, contact);
        self.write_row(user, contact, EventType::UserRegistered);
        self.note(format!("user {user} registers contact {contact}"));
        self.wake_someone();
    }

    /// SPEC §6: the user's undelivered rows are cancelled, a deletion row is written.
    fn erase(&mut self, user: u32) {
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

    fn write_row(&mut self, user: u32, contact: u32, event: EventType) {
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

    /// The claim statement: due rows, oldest due first, none while an earlier row about the
    /// same contact is pending or leased by anyone.
    fn claim(&mut self, limit: usize) -> Vec<Claimed> {
        let now = at(self.now);
        let lease = now + self.config.core.lease;
        let free = |r: &Row| r.locked_until.is_none_or(|until| until <= now);
        let blocked = |r: &Row| {
            self.rows.iter().any(|e| {
                let same = match ORDER_BY {
                    OrderBy::Contact => e.contact == r.contact,
                };
                same && e.written < r.written && (e.status == Status::Pending || !free(e))
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
    fn store(&mut self, batch: &[Finished]) -> Result<(), Failure> {
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
                Completion::Delivered { .. } => row.status = Status::Delivered,
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

    fn carry_out(&mut self, instance: usize, actions: Actions) -> Result<(), Failure> {
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

    /// A request leaves an instance: the invariants that hold at the provider's door.
    fn send(
        &mut self,
        instance: usize,
        epoch: u32,
        id: RequestId,
        rows: Vec<Claimed>,
    ) -> Result<(), Failure> {
        let now = at(self.now);
        for claimed in &rows {
            // The core sends only what its lease covers for the whole timeout.
            if !super::may_send(claimed.lease, now, self.config.core.timeout) {
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
            let outcomes = Some(vec![AttemptOutcome::NotSent { retry_after }]);
            self.schedule(
                0,
                Event::Answer {
                    instance,
                    epoch,
                    id,
                    outcomes,
                },
            );
            return Ok(());
        }
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
                misconfigured: false,
            }
        } else if chaotic {
            self.random_answer()
        } else {
            AttemptOutcome::Delivered { status: 200 }
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
        self.at_provider.insert(request, AtProvider { rows });
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

    fn random_answer(&mut self) -> AttemptOutcome {
        match self.rng.random_range(0..10) {
            0..=3 => AttemptOutcome::Delivered { status: 200 },
            4 => AttemptOutcome::Permanent {
                status: [400, 409, 422][self.rng.random_range(0..3)],
                error: "refused".into(),
            },
            5 => AttemptOutcome::Transient {
                status: Some(429),
                error: "rate limited".into(),
                retry_after: Some(Duration::from_millis(self.rng.random_range(0..10_000))),
                misconfigured: false,
            },
            6 => AttemptOutcome::Transient {
                status: Some([401, 403, 404, 410][self.rng.random_range(0..4)]),
                error: "check the key".into(),
                retry_after: None,
                misconfigured: true,
            },
            _ => AttemptOutcome::Transient {
                status: Some([500, 502, 503, 408][self.rng.random_range(0..4)]),
                error: "unavailable".into(),
                retry_after: None,
                misconfigured: false,
            },
        }
    }
}

/// Runs schedule `seed`; on failure, says how to replay it.
fn run_seed(seed: u64) -> Result<(), String> {
    Sim::new(seed).run().map(drop).map_err(|failure| {
        let config = Sim::new(seed).config;
        format!(
            "simulation failed, seed {seed} (replay: SIGNUP_SIM_SEED={seed} cargo test sim): {}\nconfiguration: {config:?}\nlast steps:\n{}",
            failure.what,
            failure.log.join("\n")
        )
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn sim_delivery_keeps_the_spec_invariants_under_random_schedules() {
    if let Some(seed) = env_u64("SIGNUP_SIM_SEED") {
        if let Err(report) = run_seed(seed) {
            panic!("{report}");
        }
        return;
    }
    let schedules = env_u64("SIGNUP_SIM_SCHEDULES").unwrap_or(2_000);
    // A fresh base each run walks new schedules; printed so any failure is a seed to replay.
    let base =
        env_u64("SIGNUP_SIM_BASE").unwrap_or_else(rand::random::<u64>) & 0xFFFF_FFFF_0000_0000;
    let mut failures = Vec::new();
    for seed in base..base + schedules {
        if let Err(report) = run_seed(seed) {
            failures.push(format!(
                "schedule {} of this run: {report}",
                seed - base + 1
            ));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {schedules} schedules failed (base {base}); first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn sim_the_same_seed_replays_the_same_schedule() {
    let trace = |seed| {
        let sim = Sim::new(seed);
        let config = format!("{:?}", sim.config);
        match sim.run() {
            Ok(log) => (config, log),
            Err(failure) => (config, failure.log),
        }
    };
    let (config, log) = trace(42);
    assert!(!log.is_empty(), "the schedule did something");
    assert_eq!((config, log), trace(42));
}
