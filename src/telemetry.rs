//! Logging: a `tracing` subscriber writing text or JSON lines to stderr.
//!
//! Lines are formatted where they are logged and written by a thread of their own, through a
//! buffer it flushes whenever it has caught up: the thread that logs (the RegistrationActor logs
//! one `registered` line per user right after its commit) never waits on a write to stderr, and
//! a burst of lines is a few writes, not one each. Nothing is dropped: when 128 000 lines wait,
//! logging waits too. Colours only when stderr is a terminal (journald and files get plain
//! text).

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::configuration::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls (tests) are no-ops. `RUST_LOG` wins over
/// `log.level` when set. Keep the guard until the process ends: dropping it writes out what is
/// still buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(settings: &LogSettings) -> WorkerGuard {
    // RUST_LOG, when set and valid, wins; `log.level` was parsed with the configuration.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| settings.level.env_filter());
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("signup-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}
