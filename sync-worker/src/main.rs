//! `sync-worker [--config PATH]`: runs until SIGTERM or Ctrl-C, then finishes its
//! current batches and acknowledges nothing it did not commit.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of the system allocator: the hot paths allocate per request (HTTP
/// parsing, JSON, script replies), and glibc's malloc and free were a fifth of the
/// gateway's CPU per reservation under load (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the worker may take to finish its current batches after SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    common::cli::run(
        "sync-worker",
        sync_worker::supervisor::start,
        |_| DRAIN_GRACE,
        "finishing the current batches",
        |running| running.shutdown(),
    )
    .await
}
