//! What each binary's listeners share: serving an axum service until the process is
//! asked to stop, stopping a process's tasks together, and the Prometheus text
//! exposition of a registry.
#![forbid(unsafe_code)]

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

/// Serves `app` on `listener` until `stop` turns true, then lets in-flight requests
/// finish. `name` labels the listener in logs.
pub fn until_stopped<S>(
    name: &'static str,
    listener: TcpListener,
    app: S,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // Made into a service once: served as a bare `Router`, every connection would
        // get its own copy of the route table (about 3 KiB a route), which 10,000 idle
        // connections turn into hundreds of megabytes.
        let app = axum::ServiceExt::<Request>::into_make_service(app);
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, listener = name, "listener failed");
        }
    })
}

/// A process's background tasks and the one switch that stops them all: each task
/// watches the receiver [`Tasks::new`] hands out and finishes its current work when
/// it turns true; [`Tasks::shutdown`] flips it and waits for every task.
pub struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    pub fn new() -> (Self, watch::Receiver<bool>) {
        let (stop, stopped) = watch::channel(false);
        (Self { stop, handles: Vec::new() }, stopped)
    }

    pub fn push(&mut self, task: JoinHandle<()>) {
        self.handles.push(task);
    }

    /// Asks every task to stop, then waits for each.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.handles {
            let _ = t.await;
        }
    }
}

/// The Prometheus text exposition of `registry` (empty if it cannot be encoded).
pub fn metrics_text(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    if prometheus::TextEncoder::new().encode(&registry.gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
