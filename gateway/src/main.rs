//! `gateway [--config PATH]`: serves until SIGTERM or Ctrl-C, then drains.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init();
    let settings = match common::cli::settings_from_args("gateway") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    let grace = Duration::from_millis(settings.gateway.shutdown_grace_ms);
    let running = match gateway::server::start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed to start");
            return ExitCode::FAILURE;
        }
    };
    common::cli::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, running.shutdown()).await.is_err() {
        tracing::warn!("drain took longer than the grace period");
    }
    ExitCode::SUCCESS
}
