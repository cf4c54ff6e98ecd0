//! What both binaries do around their work: read `--config`, load settings (exit 64
//! on bad settings), warn about development secrets, wait for SIGTERM or Ctrl-C, drain.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Settings, EXIT_BAD_CONFIG};

/// Loads the settings from the command line (`[--config PATH]`) and the environment.
/// On bad arguments or settings, prints why and returns the exit code to use.
pub fn settings_from_args(bin: &str) -> Result<Settings, u8> {
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(p)) => Some(PathBuf::from(p)),
        (Some(other), _) => {
            eprintln!("unexpected argument {other}; usage: {bin} [--config PATH]");
            return Err(EXIT_BAD_CONFIG as u8);
        }
    };
    let settings = Settings::load(path.as_deref()).map_err(|e| {
        eprintln!("{e}");
        EXIT_BAD_CONFIG as u8
    })?;
    for key in settings.dev_secrets_in_use() {
        tracing::warn!(key, "development default secret in use; set it before production");
    }
    Ok(settings)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A binary's whole life: telemetry (logs; traces when an OTLP endpoint is set), settings from the command line, `start`, then on
/// SIGTERM or Ctrl-C `stop` (drain), bounded by `grace`. `stopping` is logged first.
pub async fn run<R, E, Start, StartFut, Stop, StopFut>(
    bin: &'static str,
    start: Start,
    grace: impl FnOnce(&Settings) -> Duration,
    stopping: &'static str,
    stop: Stop,
) -> ExitCode
where
    E: std::fmt::Display,
    Start: FnOnce(Settings) -> StartFut,
    StartFut: Future<Output = Result<R, E>>,
    Stop: FnOnce(R) -> StopFut,
    StopFut: Future<Output = ()>,
{
    // Kept to the end: dropping it flushes the spans still buffered.
    let _telemetry = crate::telemetry::init(bin);
    let settings = match settings_from_args(bin) {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    let grace = grace(&settings);
    let running = match start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "{bin} failed to start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down: {stopping}");
    if tokio::time::timeout(grace, stop(running)).await.is_err() {
        tracing::warn!("drain took longer than the grace period");
    }
    ExitCode::SUCCESS
}
