//! Each Lua script's Rust half, one module beside each `lua/<name>.lua`: the
//! `KEYS`/`ARGV` builder (the key order is written here once, and the tests build
//! their calls with it too) and the reply decoder. The store runs them through its
//! link; a test may run them on a connection of its own to look under the cache.

pub mod confirm;
pub mod counters;
pub mod deadlines;
pub mod lua;
pub mod moves;
pub mod release;
pub mod reserve;
pub mod restore;
pub mod tune;
pub mod warmup;

mod reply;

use lua::Script;
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
    pub(crate) moves: Script,
    pub(crate) deadlines: Script,
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
            moves: moves::script(),
            deadlines: deadlines::script(),
        }
    }
}

/// The campaign id, its window, limit, payment window and thresholds, then the
/// notice channel: the arguments `warmup.lua` and `restore.lua`'s last step share
/// (the prelude's `write_meta` reads them).
fn push_meta_args(
    inv: &mut lua::ScriptInvocation<'_>,
    k: &crate::keys::KeySpace,
    spec: &crate::campaign::CampaignLaunch,
) {
    inv.arg(spec.campaign.as_str())
        .arg(spec.starts_ms)
        .arg(spec.ends_ms)
        .arg(spec.per_user_limit)
        .arg(spec.payment_window_secs)
        .arg(threshold_arg(spec.max_orders_per_sec))
        .arg(threshold_arg(spec.max_user_requests_per_sec))
        .arg(k.notice_channel());
}

/// A threshold as the scripts take it: empty for none.
fn threshold_arg(v: Option<u32>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}
