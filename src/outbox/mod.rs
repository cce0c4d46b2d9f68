//! The transactional outbox (`email_outbox`): one row per event for the email provider,
//! written in the user's transaction. Two sides use it: the EmailSyncActor claims, delivers and
//! records (`delivery`), operators list and replay (`operator`).

mod contact;
mod delivery;
mod operator;

pub(crate) use contact::{ContactKey, load_or_create_server_key};
pub use delivery::*;
pub(crate) use operator::*;
