//! The worker's one error type.

use engine::EngineError;
use ledger::DbError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("rabbitmq: {0}")]
    Broker(String),
    #[error("redis: {0}")]
    Redis(#[from] EngineError),
    #[error("mysql: {0}")]
    Db(#[from] DbError),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl From<ledger::reconcile::ReconcileError> for WorkerError {
    fn from(e: ledger::reconcile::ReconcileError) -> Self {
        match e {
            ledger::reconcile::ReconcileError::Redis(e) => e.into(),
            ledger::reconcile::ReconcileError::Db(e) => e.into(),
        }
    }
}

impl From<lapin::Error> for WorkerError {
    fn from(e: lapin::Error) -> Self {
        WorkerError::Broker(e.to_string())
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// Bounds a broker call.
pub async fn bounded<T, E: Into<WorkerError>>(
    limit: std::time::Duration,
    what: &'static str,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(WorkerError::Timeout(what)),
    }
}
