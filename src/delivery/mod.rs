//! The delivery side's decisions, apart from its I/O: [`core`] is the state machine the
//! EmailSyncActor runs (sans-I/O), `sim` walks it through seeded random schedules against a
//! model of the outbox and the provider (tests only).

pub mod core;
#[cfg(test)]
mod sim;

pub use self::core::{
    Actions, CLAIM_SLACK, Core, CoreSettings, Noted, Request, RequestId, lease_accepted, may_send,
};
