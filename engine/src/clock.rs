//! The process's clock, in the unit every deadline and window is kept in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by this process's clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
