//! The delivery side's decisions, apart from its I/O: [`core`] is the state machine the
//! EmailSyncActor runs (sans-I/O), `sim` walks it through seeded random schedules against a
//! model of the outbox and the provider (tests only).

pub(crate) mod core;
#[cfg(test)]
mod sim;

pub(crate) use self::core::{
    Actions, Core, CoreSettings, Noted, Request, RequestId, lease_accepted, may_send,
};
