//! The engine's one error type. Every variant is a failure of a dependency or of the
//! engine itself; what a buyer asked for and could not get is an outcome, not an error.

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Redis did not answer in time, refused the connection or dropped it.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Too many reservations wait to be relayed to the broker; new ones are refused
    /// until the backlog shrinks.
    #[error("outbox backlog full ({0} entries)")]
    Backpressure(u64),
    /// Redis answered something the engine does not understand: a bug, never input.
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for EngineError {
    fn from(e: redis::RedisError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
