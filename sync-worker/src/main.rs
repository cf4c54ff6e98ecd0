//! `sync-worker [--config PATH]`: serves until SIGTERM or Ctrl-C, then drains.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use common::config::{Settings, EXIT_BAD_CONFIG};

fn config_path() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(None),
        (Some("--config"), Some(p)) => Ok(Some(PathBuf::from(p))),
        (Some(other), _) => Err(format!("unexpected argument {other}; usage: sync-worker [--config PATH]")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    common::telemetry::init();
    let settings = match config_path().and_then(|p| Settings::load(p.as_deref()).map_err(|e| e.to_string())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    for key in settings.dev_secrets_in_use() {
        tracing::warn!(key, "development default secret in use; set it before production");
    }
    let grace = Duration::from_millis(settings.gateway.shutdown_grace_ms * 2);
    let running = match sync_worker::app::start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "sync-worker failed to start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing the current batches");
    if tokio::time::timeout(grace, running.shutdown()).await.is_err() {
        tracing::warn!("drain took longer than the grace period");
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
