//! The email provider side: the events sent (`event`), what one delivery attempt sends and how
//! its answer is judged (`webhook`), when to try again (`retry`), and when to stop trying for a while
//! (`circuit_breaker`). All of it runs in the EmailSyncActor, never on the request path.

pub(crate) mod circuit_breaker;
pub(crate) mod completion;
pub(crate) mod event;
pub(crate) mod import;
pub(crate) mod outcome;
pub mod provider;
pub(crate) mod retry;
pub mod webhook;

pub(crate) use circuit_breaker::{Admission, CircuitBreaker, CircuitState};
pub(crate) use completion::completion;
pub(crate) use event::{Event, UserRegistered, WebhookBody};
pub(crate) use outcome::AttemptOutcome;
pub(crate) use provider::{Delivery, Paced, Provider, WebhookProvider};
