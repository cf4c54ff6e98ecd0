//! The engine's Redis Lua scripts, embedded at compile time.
//!
//! Each script is the shared prelude (`prelude.lua`: clock, integer formatting, outbox
//! entry, key checks) followed by its own body. Every script takes every key it
//! touches in `KEYS`, and all keys of one campaign share one hash tag, so the scripts
//! are valid on Redis Cluster. Each one checks every condition before its first
//! write, because Redis does not roll a script back.
#![forbid(unsafe_code)]

macro_rules! script {
    ($file:literal) => {
        concat!(include_str!("../prelude.lua"), "\n", include_str!(concat!("../", $file)))
    };
}

/// Reserves every line of one order or none; writes the reservation and its outbox entry.
pub const RESERVE: &str = script!("reserve.lua");
/// Gives a pending reservation's units back (cancel or expiry), exactly once.
pub const RELEASE: &str = script!("release.lua");
/// Applies a payment: pending → paid, released → refund_required.
pub const CONFIRM: &str = script!("confirm.lua");
/// Loads a new campaign; refuses to overwrite an existing one.
pub const WARMUP: &str = script!("warmup.lua");
/// Changes a live campaign's end, limit or thresholds.
pub const TUNE: &str = script!("tune.lua");
/// Reads every sku's counters in one consistent snapshot.
pub const COUNTERS: &str = script!("counters.lua");
/// Moves units of one sku between two shards of a campaign (take, give, settle).
pub const MOVE: &str = script!("move.lua");
/// A shard's unpaid orders by deadline, settled ones dropped from the list's head.
pub const DEADLINES: &str = script!("deadlines.lua");
/// Rebuilds a campaign Redis lost from what MySQL holds, in steps; live only at the end.
pub const RESTORE: &str = script!("restore.lua");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_starts_with_the_prelude_and_has_a_body() {
        for s in [RESERVE, RELEASE, CONFIRM, WARMUP, TUNE, COUNTERS, RESTORE, MOVE, DEADLINES] {
            assert!(s.contains("local function now_ms()"));
            assert!(s.lines().count() > 60, "script body missing");
        }
    }
}
