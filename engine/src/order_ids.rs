//! Order ids derived from what identifies a request: `HMAC-SHA256(secret, campaign,
//! user, idempotency key)`. A retry with the same key names the same order, so
//! `reserve.lua` finds it with one lookup of the order's own hash: that hash is the
//! reservation and the idempotency record at once (no second key, no second copy of
//! the lines). The secret keeps other users' ids unguessable.
//!
//! The id is `<campaign>.<30 hex of the MAC><2 hex of the shard>`, the form every
//! order id has. A key used again after its idempotency window has passed must not
//! meet its old order: `reserve.lua` then takes the next id of the key's chain,
//! `<campaign>.<first 30 hex of SHA1("<id>#<n>")><shard>` for n = 1, 2, ..., which it
//! can compute itself (no secret needed: only this user's retries know the first id).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{CampaignId, IdempotencyKey, OrderId, UserId};
use crate::error::{EngineError, Result};

/// Derives order ids with one server secret (every gateway must share it).
#[derive(Clone)]
pub struct OrderIds {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for OrderIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderIds(..)")
    }
}

impl OrderIds {
    pub fn new(secret: &[u8]) -> Result<Self> {
        // HMAC takes a key of any length: the error is unreachable.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map_err(|e| EngineError::Protocol(format!("order id secret: {e}")))?;
        Ok(Self { mac })
    }

    /// The first id of `user`'s order with `key` in `campaign`, homed on `shard`.
    pub fn derive(
        &self,
        campaign: &CampaignId,
        shard: usize,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> OrderId {
        let mut mac = self.mac.clone();
        // Each part led by its length: no two (campaign, user, key) give one input.
        for part in [campaign.as_str(), user.as_str(), key.as_str()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut id = String::with_capacity(campaign.as_str().len() + 33);
        id.push_str(campaign.as_str());
        id.push('.');
        id.push_str(&hex::encode(&digest[..15]));
        id.push_str(&format!("{:02x}", shard % 256));
        OrderId::derived(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(secret: &str, c: &str, shard: usize, u: &str, k: &str) -> OrderId {
        OrderIds::new(secret.as_bytes()).unwrap().derive(
            &CampaignId::parse(c).unwrap(),
            shard,
            &UserId::parse(u).unwrap(),
            &IdempotencyKey::parse(k).unwrap(),
        )
    }

    #[test]
    fn one_request_one_id_and_any_difference_another() {
        let a = ids("s", "c", 0, "u", "k");
        assert_eq!(a, ids("s", "c", 0, "u", "k"));
        assert!(OrderId::parse(a.as_str()).is_ok(), "{a}");
        assert_eq!(a.campaign().as_str(), "c");
        let mac = |o: &OrderId| o.as_str()[o.as_str().len() - 32..o.as_str().len() - 2].to_owned();
        for other in [
            ids("t", "c", 0, "u", "k"),
            ids("s", "d", 0, "u", "k"),
            ids("s", "c", 0, "v", "k"),
            ids("s", "c", 0, "u", "l"),
        ] {
            assert_ne!(mac(&a), mac(&other), "{other}");
        }
        // The same bytes split differently between user and key.
        assert_ne!(mac(&ids("s", "c", 0, "u", "kx")), mac(&ids("s", "c", 0, "uk", "x")));
    }

    #[test]
    fn the_id_names_its_shard() {
        let o = ids("s", "c", 5, "u", "k");
        assert_eq!(o.shard_hint(), 5);
        let other = ids("s", "c", 7, "u", "k");
        assert_eq!(other.shard_hint(), 7);
        assert_eq!(o.as_str()[..o.as_str().len() - 2], other.as_str()[..other.as_str().len() - 2]);
    }
}
