//! Each Lua script's Rust half, one module beside each `lua/<name>.lua`: the
//! `KEYS`/`ARGV` builder (the key order is written here once, and the tests build
//! their calls with it too) and the reply decoder. The store runs them through its
//! link; a test may run them on a connection of its own to look under the cache.

pub mod confirm;
pub mod counters;
pub mod release;
pub mod reserve;
pub mod restore;
pub mod tune;
pub mod warmup;

mod reply;

use redis::Script;
pub(crate) use reply::{parse_items, protocol, Reply};

/// The scripts, hashed once.
pub(crate) struct Scripts {
    pub(crate) reserve: Script,
    pub(crate) release: Script,
    pub(crate) confirm: Script,
    pub(crate) warmup: Script,
    pub(crate) tune: Script,
    pub(crate) counters: Script,
    pub(crate) restore: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            reserve: reserve::script(),
            release: release::script(),
            confirm: confirm::script(),
            warmup: warmup::script(),
            tune: tune::script(),
            counters: counters::script(),
            restore: restore::script(),
        }
    }
}

/// A threshold as the scripts take it: empty for none.
fn threshold_arg(v: Option<u32>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}
