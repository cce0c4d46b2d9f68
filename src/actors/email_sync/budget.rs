//! The shell's part of the shared provider budget (SPEC §3.6, PostgreSQL): following the other
//! instances' pauses, and giving back the slots this instance no longer uses.

use super::*;

impl EmailSyncActor {
    /// With a shared budget: listens for the pauses the other instances record, and gives
    /// back slots idle here for [`crate::budget::IDLE_SLOT`], so that the instances that have
    /// work get them.
    pub(super) fn start_shared_budget(&mut self, ctx: &mut Context<Self>) {
        if self.provider.budget().shared_part().is_none() {
            return;
        }
        let provider = Arc::clone(&self.provider);
        ctx.spawn(async move { provider.budget().follow_shared_pauses().await }.into_actor(self));
        ctx.run_interval(crate::budget::IDLE_SLOT, |act, ctx| {
            act.release_slots(false, ctx)
        });
    }

    /// Gives back this instance's idle slots: those idle long enough, or all of them.
    pub(super) fn release_slots(&mut self, all: bool, ctx: &mut Context<Self>) {
        let provider = Arc::clone(&self.provider);
        ctx.spawn(
            async move {
                if let Some(shared) = provider.budget().shared_part() {
                    shared.release_idle(all).await;
                }
            }
            .into_actor(self),
        );
    }

    /// The drain is over: nothing is in flight, so every slot of a shared budget is idle and
    /// goes back now rather than when its lease ends; then the drain is answered.
    pub(super) fn answer_drain(&mut self, ctx: &mut Context<Self>) {
        let provider = Arc::clone(&self.provider);
        let done = self.draining.take();
        ctx.spawn(
            async move {
                if let Some(shared) = provider.budget().shared_part() {
                    shared.release_idle(true).await;
                    shared.close().await;
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            .into_actor(self),
        );
    }
}
