//! The two actors of SPEC §1: the RegistrationActor (serialized uniqueness + insert, replies
//! synchronously) and the email sync side it wakes with fire-and-forget messages.

pub mod email_sync;
pub mod registration_actor;

pub use email_sync::{DeliveryHook, Drain, EmailSyncActor, SweepDelivered, WakeUp};
pub use registration_actor::{
    CommitFailed, CommitWatch, Registered, RegistrationActor, Registrations,
};
