//! The email sync side's message. The RegistrationActor `try_send`s a [`WakeUp`] after each
//! commit that created users; a lost wake-up loses nothing, since the outbox is the truth.

use actix::prelude::*;

/// "There may be new due rows in the outbox." Carries no data on purpose.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakeUp;

/// Stands in for the EmailSyncActor until delivery is built: it accepts wake-ups and does
/// nothing, so outbox rows stay pending (and are visible in readiness).
pub struct PendingOnlyActor;

impl Actor for PendingOnlyActor {
    type Context = Context<Self>;
}

impl Handler<WakeUp> for PendingOnlyActor {
    type Result = ();

    fn handle(&mut self, _: WakeUp, _: &mut Self::Context) {
        tracing::trace!("email sync is not running; outbox rows stay pending");
    }
}
