//! `sync-worker [--config PATH]`: runs until SIGTERM or Ctrl-C, then finishes its
//! current batches and acknowledges nothing it did not commit.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init();
    let settings = match common::cli::settings_from_args("sync-worker") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    let running = match sync_worker::supervisor::start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "sync-worker failed to start");
            return ExitCode::FAILURE;
        }
    };
    common::cli::shutdown_signal().await;
    tracing::info!("shutting down: finishing the current batches");
    running.shutdown().await;
    ExitCode::SUCCESS
}
