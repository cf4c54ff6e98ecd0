//! `gateway [--config PATH]`: serves until SIGTERM or Ctrl-C, then drains in-flight
//! requests for up to `gateway.shutdown_grace_ms`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    common::cli::run(
        "gateway",
        gateway::server::start,
        |s| Duration::from_millis(s.gateway.shutdown_grace_ms),
        "draining in-flight requests",
        |running| running.shutdown(),
    )
    .await
}
