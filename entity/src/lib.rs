//! sea-orm entities of signup's tables. Only entities live here; the schema itself is owned by
//! the `migration` crate, which never imports this one, so old migrations never change.

pub mod consent;
pub mod console_session;
pub mod email_outbox;
pub mod idempotency_key;
pub mod provider_event;
pub mod server_key;
pub mod user;
