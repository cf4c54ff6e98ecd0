//! `lua/deadlines.lua`: a shard's unpaid orders by deadline, for the expiry sweep (its
//! list of new orders' ids, settled ones dropped from the head as they are met, and
//! the sorted set of builds before).

use redis::Value;

use super::lua::{Script, ScriptInvocation};
use super::protocol;
use crate::domain::{CampaignId, OrderId};
use crate::error::{EngineError, Result};
use crate::keys::KeySpace;

pub fn script() -> Script {
    Script::new(flashsale_lua::DEADLINES)
}

/// KEYS: the shard's deadline list and pending set; ARGV: now, how many due ids at
/// most (0: only the next deadline), the shard's order key prefix.
pub fn invocation<'s>(
    script: &'s Script,
    k: &KeySpace,
    tag: &CampaignId,
    now_ms: i64,
    want: usize,
) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    inv.key(k.deadlines(tag)).key(k.pending(tag));
    inv.arg(now_ms).arg(want).arg(k.order_prefix(tag));
    inv
}

/// The earliest deadline of a pending order (`None`: nothing pending) and the due ids.
pub fn decode(v: Value) -> Result<(Option<i64>, Vec<OrderId>)> {
    let Value::Array(items) = v else {
        return Err(EngineError::Protocol(format!("deadlines: expected an array, got {v:?}")));
    };
    let mut items = items.into_iter();
    let next = match items.next() {
        Some(Value::Int(ms)) if ms >= 0 => Some(ms),
        Some(Value::Int(_)) => None,
        other => return Err(EngineError::Protocol(format!("deadlines: next deadline {other:?}"))),
    };
    let mut due = Vec::with_capacity(items.len());
    for item in items {
        let Value::BulkString(bytes) = item else {
            return Err(EngineError::Protocol(format!("deadlines: an id {item:?}")));
        };
        let id = String::from_utf8(bytes).map_err(protocol)?;
        // An id that is no order id (written by hand) is skipped, as the sweep did.
        if let Ok(order) = OrderId::parse(&id) {
            due.push(order);
        }
    }
    Ok((next, due))
}
