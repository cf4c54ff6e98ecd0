//! Order ids derived from what identifies a request: `HMAC-SHA256(secret, campaign,
//! user, idempotency key)`. A retry with the same key names the same order, so
//! `reserve.lua` finds it with one lookup of the order's own hash: that hash is the
//! reservation and the idempotency record at once (no second key, no second copy of
//! the lines). The secret keeps other users' orders unguessable.
//!
//! What is derived is the order's ref ([`OrderRef`]): `8`, 17 hex digits of the MAC and
//! 2 of the shard. It names the order's Redis key. The id adds the creation time in
//! front, `<campaign>.<12 hex of the ms><ref>` (32 hex digits, the form every order id
//! has), written by `reserve.lua` from Redis's clock: ids grow with time, so MySQL
//! inserts them at the end of its primary key instead of all over it (random ids made
//! MariaDB's cost per order grow with the table). The `8` sits where a UUIDv7 (the ids
//! of builds before) has its version digit `7`, so the two kinds never meet.
//!
//! A key used again after its idempotency window has passed must not meet its old
//! order: `reserve.lua` then takes the next ref of the key's chain, `8` + the first 17
//! hex of `SHA1("<ref>#<n>")` + the shard, for n = 1, 2, ..., which it can compute
//! itself (no secret needed: only this user's retries know the first ref).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{CampaignId, IdempotencyKey, OrderRef, UserId};
use crate::error::{EngineError, Result};

/// Derives order refs with one server secret (every gateway must share it).
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

    /// The first ref of `user`'s order with `key` in `campaign`, homed on `shard`.
    pub fn derive(
        &self,
        campaign: &CampaignId,
        shard: usize,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> OrderRef {
        let mut mac = self.mac.clone();
        // Each part led by its length: no two (campaign, user, key) give one input.
        for part in [campaign.as_str(), user.as_str(), key.as_str()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = hex::encode(mac.finalize().into_bytes());
        OrderRef::derived(format!("8{}{:02x}", &digest[..17], shard % 256))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::OrderId;

    fn refs(secret: &str, c: &str, shard: usize, u: &str, k: &str) -> OrderRef {
        OrderIds::new(secret.as_bytes()).unwrap().derive(
            &CampaignId::parse(c).unwrap(),
            shard,
            &UserId::parse(u).unwrap(),
            &IdempotencyKey::parse(k).unwrap(),
        )
    }

    #[test]
    fn one_request_one_ref_and_any_difference_another() {
        let a = refs("s", "c", 0, "u", "k");
        assert_eq!(a, refs("s", "c", 0, "u", "k"));
        assert_eq!(a.as_str().len(), 20);
        assert!(a.as_str().starts_with('8'));
        for other in [
            refs("t", "c", 0, "u", "k"),
            refs("s", "d", 0, "u", "k"),
            refs("s", "c", 0, "v", "k"),
            refs("s", "c", 0, "u", "l"),
        ] {
            assert_ne!(a.as_str()[..18], other.as_str()[..18], "{other:?}");
        }
        // The same bytes split differently between user and key.
        assert_ne!(refs("s", "c", 0, "u", "kx"), refs("s", "c", 0, "uk", "x"));
    }

    #[test]
    fn the_ref_names_its_shard_and_an_id_made_from_it_names_its_ref() {
        let r = refs("s", "c", 5, "u", "k");
        assert!(r.as_str().ends_with("05"));
        // What reserve.lua makes of it: the creation time in front.
        let id = OrderId::parse(&format!("c.{:012x}{}", 1_796_563_387_443_i64, r.as_str())).unwrap();
        assert_eq!(id.key_part(), r.as_str());
        assert_eq!(id.shard_hint(), 5);
        // An id of the builds before (a UUIDv7: `7` where a made id has `8`) is its own key.
        let old = OrderId::generate(&CampaignId::parse("c").unwrap());
        assert_eq!(old.key_part(), old.as_str());
        let old_sharded = OrderId::generate_in(&CampaignId::parse("c").unwrap(), 3);
        assert_eq!(old_sharded.key_part(), old_sharded.as_str());
    }
}
