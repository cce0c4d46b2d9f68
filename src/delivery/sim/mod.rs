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

mod config;
mod model;
mod provider;
mod steps;

use config::{Config, draw_config};
use model::Row;

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
    /// The provider tells us a live user's consent changed: kind `webhook` forwards it as a
    /// row of its own, after the user's earlier rows (SPEC §8).
    ConsentChange,
    OperatorRetry,
}

impl Event {
    /// The instance life an event belongs to: it is dropped once that life is over.
    fn owner(&self) -> Option<(usize, u32)> {
        match *self {
            Event::Tick { instance, epoch }
            | Event::Poll { instance, epoch }
            | Event::ClaimRuns {
                instance, epoch, ..
            }
            | Event::ClaimReturns {
                instance, epoch, ..
            }
            | Event::Answer {
                instance, epoch, ..
            }
            | Event::StoreRuns {
                instance, epoch, ..
            }
            | Event::Stored { instance, epoch }
            | Event::ReleaseRuns {
                instance, epoch, ..
            }
            | Event::Released { instance, epoch }
            | Event::CancelAll { instance, epoch }
            | Event::DrainDeadline { instance, epoch } => Some((instance, epoch)),
            Event::ProviderDone { .. }
            | Event::Crash { .. }
            | Event::Drain { .. }
            | Event::Restart { .. }
            | Event::Register
            | Event::Erase
            | Event::RegisterAgain
            | Event::ConsentChange
            | Event::OperatorRetry => None,
        }
    }
}

/// A request at the provider.
#[derive(Debug)]
struct AtProvider {
    /// Each row, and whether the provider applies it when the request ends (a timed-out
    /// request may or may not be).
    rows: Vec<(Uuid, bool)>,
    /// The budget slot it holds.
    slot: usize,
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
    /// The shared budget's `max_in_flight` slots (SPEC §3.6): who holds each, and until when.
    slots: Vec<Option<((usize, u32), Ms)>>,
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
        let slots = config.core.max_requests;
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
            slots: vec![None; slots],
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
        for _ in 0..self.rng.random_range(0..=3) {
            let when = self.rng.random_range(0..self.chaos_until);
            self.schedule(when, Event::ConsentChange);
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
            // A consent change says nothing about whether the provider holds the contact.
            if row.status == Status::Delivered && row.event != EventType::UserConsentChanged {
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

    fn alive(&self, instance: usize, epoch: u32) -> bool {
        let node = &self.instances[instance];
        node.up && node.epoch == epoch
    }

    fn wake_someone(&mut self) {
        let instance = self.rng.random_range(0..self.instances.len());
        let epoch = self.instances[instance].epoch;
        self.schedule(0, Event::Tick { instance, epoch });
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
