//! The email provider side: the events sent (`event`), what one delivery attempt sends and how
//! its answer is judged (`webhook`), when to try again (`retry`), and when to stop trying for a while
//! (`circuit_breaker`). All of it runs in the EmailSyncActor, never on the request path.

pub mod circuit_breaker;
pub mod completion;
pub mod event;
pub mod import;
pub mod outcome;
pub mod provider;
pub mod retry;
pub mod webhook;

pub use circuit_breaker::{Admission, CircuitBreaker, CircuitState};
pub use completion::completion;
pub use event::{Event, UserRegistered, WebhookBody};
pub use outcome::AttemptOutcome;
pub use provider::{Adapter, Delivery, Paced, Provider, WebhookProvider};
