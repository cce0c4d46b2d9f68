//! A registration's ticket to its COMMIT (SPEC §4.7, "a 503 means not stored").
//!
//! The person waiting for an answer and the RegistrationActor committing their batch must agree
//! on one thing: is this registration to be stored? Whoever moves the ticket first decides.
//! The caller, at its deadline (or when its client leaves), gives up only if the COMMIT has not
//! begun: it then answers 503, and the actor withdraws the registration before committing. Once
//! the actor has entered the COMMIT, the caller cannot give up: it waits for the COMMIT's
//! outcome (bounded once more by the deadline) and tells the truth. A COMMIT that fails hands
//! the ticket back, so a retried member can be given up again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const WAITING: u8 = 0;
const COMMITTING: u8 = 1;
const GAVE_UP: u8 = 2;

/// Shared by a caller and the candidate it submitted.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

impl Ticket {
    pub fn new() -> Self {
        Self::default()
    }

    /// The caller gives up: true if the registration will now never be stored (answer 503),
    /// false if its COMMIT is already under way (wait for its outcome).
    pub fn give_up(&self) -> bool {
        self.0
            .compare_exchange(WAITING, GAVE_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.gave_up()
    }

    /// Whether the caller has given up.
    pub fn gave_up(&self) -> bool {
        self.0.load(Ordering::Acquire) == GAVE_UP
    }

    /// The writer is about to COMMIT this registration: false if the caller gave up first (it
    /// must then be withdrawn from the transaction).
    pub fn enter_commit(&self) -> bool {
        self.0
            .compare_exchange(WAITING, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The COMMIT did not happen (it failed, or the batch was withdrawn): the caller may give up
    /// again.
    pub fn reopen(&self) {
        let _ = self
            .0
            .compare_exchange(COMMITTING, WAITING, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The caller's end: dropped (the client left, the request was cancelled), it gives up.
#[derive(Debug)]
pub(crate) struct Holder(pub Ticket);

impl Drop for Holder {
    fn drop(&mut self) {
        self.0.give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoever_moves_the_ticket_first_decides() {
        let late_caller = Ticket::new();
        assert!(late_caller.enter_commit());
        assert!(
            !late_caller.give_up(),
            "the COMMIT is under way: wait for it"
        );
        assert!(!late_caller.gave_up());

        let early_caller = Ticket::new();
        assert!(early_caller.give_up());
        assert!(!early_caller.enter_commit(), "withdrawn before COMMIT");
        assert!(early_caller.gave_up());

        let failed = Ticket::new();
        assert!(failed.enter_commit());
        failed.reopen();
        assert!(failed.give_up(), "a failed COMMIT hands the ticket back");

        let left = Ticket::new();
        drop(Holder(left.clone()));
        assert!(left.gave_up(), "a caller that went away gave up");
    }
}
