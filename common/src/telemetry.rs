//! Logging set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber writing to stderr. `RUST_LOG` picks the levels
/// (default `info`). Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
