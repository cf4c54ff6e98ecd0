//! The one retry schedule of both binaries: pauses that double from `min` up to `max`
//! while a dependency stays away, and start over once it answers.

use std::time::Duration;

/// Pauses of 50 ms → 2 s for a dependency expected back soon (a reconnect, MySQL
/// coming up): the first retry is quick, a long outage costs one attempt every 2 s.
pub const DEPENDENCY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Doubling pauses between two bounds.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The pause before the next attempt; the one after it is twice as long, up to `max`.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// The dependency answered: the next pause is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_bound_and_start_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u128> = (0..5).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(100));
    }
}
