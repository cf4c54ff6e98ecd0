//! Serving an axum router until the process is asked to stop.

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Serves `app` on `listener` until `stop` turns true, then lets in-flight requests
/// finish. `name` labels the listener in logs.
pub fn serve_until_stopped(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, listener = name, "listener failed");
        }
    })
}
