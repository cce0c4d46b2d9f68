//! The two actors of SPEC §1: the RegistrationActor (serialized uniqueness + insert, replies
//! synchronously) and the email sync side it wakes with fire-and-forget messages.

pub(crate) mod email_sync;
pub(crate) mod registration_actor;

pub use email_sync::{DeliveryHook, Drain, EmailSyncActor, SweepDelivered, WakeUp};
pub(crate) use registration_actor::Registered;
pub use registration_actor::{CommitWatch, RegistrationActor, Registrations};
