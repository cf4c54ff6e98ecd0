//! Reading the scripts' array replies.

use common::message::{OrderItem, OrderStatus};
use redis::Value;

use crate::domain::SkuId;
use crate::error::{EngineError, Result};

pub(crate) fn protocol(e: impl std::fmt::Display) -> EngineError {
    EngineError::Protocol(e.to_string())
}

pub(crate) fn parse_items(json: &str) -> Result<Vec<OrderItem>> {
    serde_json::from_str(json).map_err(protocol)
}

/// A script's array reply; element 0 is the outcome tag.
pub(crate) struct Reply(pub(crate) Vec<Value>);

impl Reply {
    pub(crate) fn new(v: Value) -> Result<Self> {
        match v {
            Value::Array(items) => Ok(Self(items)),
            other => Err(EngineError::Protocol(format!("expected an array, got {other:?}"))),
        }
    }

    pub(crate) fn tag(&self) -> Result<&str> {
        self.str(0).map_err(|e| EngineError::Protocol(format!("no outcome tag: {e}")))
    }

    /// Element `i` as text, borrowed from the reply (a number is not text here).
    pub(crate) fn str(&self, i: usize) -> Result<&str> {
        match self.0.get(i) {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).map_err(protocol),
            Some(Value::SimpleString(s)) => Ok(s),
            other => Err(EngineError::Protocol(format!("element {i}: {other:?}"))),
        }
    }

    /// Element `i` as owned text (a number as its digits).
    pub(crate) fn string(&self, i: usize) -> Result<String> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(n.to_string()),
            _ => self.str(i).map(str::to_owned),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => self.str(i)?.parse().map_err(protocol),
        }
    }

    pub(crate) fn sku(&self, i: usize) -> Result<SkuId> {
        SkuId::parse(&self.string(i)?).map_err(protocol)
    }

    pub(crate) fn status(&self, i: usize) -> Result<OrderStatus> {
        OrderStatus::parse(&self.string(i)?).ok_or_else(|| EngineError::Protocol("unknown state".into()))
    }

    /// Element `i` as a flat `{sku, gen, sku, gen, ...}` array.
    pub(crate) fn sku_gens(&self, i: usize) -> Result<Vec<(SkuId, u64)>> {
        let Some(Value::Array(flat)) = self.0.get(i) else {
            return Ok(Vec::new());
        };
        let inner = Reply(flat.clone());
        (0..flat.len() / 2).map(|j| Ok((inner.sku(2 * j)?, inner.int(2 * j + 1)? as u64))).collect()
    }
}
