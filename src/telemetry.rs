//! Logging: a `tracing` subscriber writing text or JSON lines to stderr.

use tracing_subscriber::EnvFilter;

use crate::configuration::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls (tests) are no-ops. `RUST_LOG` wins over
/// `log.level` when set.
pub fn init(settings: &LogSettings) {
    // RUST_LOG, when set and valid, wins; `log.level` was parsed with the configuration.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| settings.level.env_filter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
