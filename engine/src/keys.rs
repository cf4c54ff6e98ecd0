//! The Redis key layout. Every key of one campaign carries the hash tag
//! `{c:<campaign>}`, so multi-key scripts stay valid on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<ns>:{c:<c>}:meta` | hash | window, limit, payment window, thresholds, skus |
//! | `<ns>:{c:<c>}:stock:<sku>` | hash | total, avail, resv, sold, price, gen |
//! | `<ns>:{c:<c>}:users` | hash | user → units held or bought, a field for every user who ever got a reservation (the buyers): shards launched or rebuilt with `engine.users_hash` (meta `layout` 2) |
//! | `<ns>:{c:<c>}:user:<user>` | string | units the user holds or bought: shards of builds before the users hash, or launched without it |
//! | `<ns>:{c:<c>}:idem:<len>:<user>:<key>` | string | fingerprint and first answer (`fp\norder\ntotal\ncreated\nexpires\nitems`): written by builds before derived order ids, and by this one only with `engine.idempotency_records`; read first in shards without the users hash (`reserve.lua` names it, and the count string, itself) |
//! | `<ns>:{c:<c>}:order:<ref>` | hash | the reservation: user, items, state, times; also its idempotency record, since its ref (the id's last 20 hex digits) is derived from (campaign, user, key) (`order_ids.rs`); `order:<order_id>` for orders of builds before |
//! | `<ns>:{c:<c>}:deadlines` | list | new orders' ids in reservation order, which is deadline order; settled ones leave from the head as the expiry sweep meets them (`deadlines.lua`) |
//! | `<ns>:{c:<c>}:pending` | zset | pending order ids by payment deadline: written by builds before the list, and by rebuilds; read with it |
//! | `<ns>:{c:<c>}:outbox` | stream | one entry per order state change |
//! | `<ns>:{c:<c>}:outbox-dead` | stream | ids of outbox entries that carried no order (set aside) |
//! | `<ns>:{c:<c>}:buyers` | set | users who ever got a reservation: shards without the users hash |
//! | `<ns>:{c:<c>}:rate` | string | reservations granted in the current second |
//! | `<ns>:{c:<c>}:payevt:<event_id>` | string | a payment event already applied |
//! | `<ns>:{c:<c>}:moves` | hash | units taken from this shard, not yet settled (`move.lua`) |
//! | `<ns>:{c:<c>}:moved-in` | zset | move ids this shard has received, by when (kept a day) |
//! | `<ns>:campaigns` | set | every campaign id (not in a script) |
//! | `<ns>:{pe:<event_id>}` | string | the order a payment event id belongs to, system-wide |
//!
//! Pub/sub channel `<ns>:events` carries `restock <c> <sku> <gen>`, `meta <c>` and
//! `buyer <c> <user>` (one buyer), `buyers <c> <json array>` (every new buyer of one
//! reservation call) and `outbox <c>` (the campaign's outbox has work again).
//!
//! On a Redis Cluster the notices a shard's own scripts send (`buyers`, `restock`,
//! `outbox`) go instead to the shard's channel `<ns>:{c:<tag>}:events`, in the slot of
//! the shard's keys, with `SPUBLISH`: a sharded notice reaches only the master and
//! replicas of that slot, where a `PUBLISH` would be forwarded to every node. `meta`
//! notices (launch, tune, rebuild) stay on `<ns>:events`, which every node hears.

use crate::domain::{CampaignId, EventId, IdempotencyKey, OrderId, OrderRef, SkuId, UserId};

/// Builds keys for one namespace.
#[derive(Debug, Clone)]
pub struct KeySpace {
    ns: String,
    /// Whether shards' notices go to their own channels (a cluster).
    shard_channels: bool,
}

impl KeySpace {
    pub fn new(namespace: &str) -> Self {
        Self { ns: namespace.to_owned(), shard_channels: false }
    }

    /// The same key space, with shards' notices on their own channels (a cluster).
    pub fn with_shard_channels(mut self, on: bool) -> Self {
        self.shard_channels = on;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `<ns>:{c:<campaign>}:`, the prefix of every key of one campaign.
    pub fn prefix(&self, c: &CampaignId) -> String {
        format!("{}:{{c:{}}}:", self.ns, c)
    }

    pub fn meta(&self, c: &CampaignId) -> String {
        format!("{}meta", self.prefix(c))
    }

    pub fn stock(&self, c: &CampaignId, sku: &SkuId) -> String {
        let mut key = String::new();
        Self::stock_after(&self.prefix(c), sku, &mut key);
        key
    }

    /// [`Self::stock`] written into `out` (emptied first) from the campaign's
    /// [`Self::prefix`]: a batch of orders names many keys with one prefix.
    pub fn stock_after<'o>(prefix: &str, sku: &SkuId, out: &'o mut String) -> &'o str {
        Self::after(prefix, "stock:", sku.as_str(), out)
    }

    fn after<'o>(prefix: &str, kind: &str, id: &str, out: &'o mut String) -> &'o str {
        out.clear();
        out.push_str(prefix);
        out.push_str(kind);
        out.push_str(id);
        out
    }

    pub fn user(&self, c: &CampaignId, user: &UserId) -> String {
        format!("{}user:{}", self.prefix(c), user)
    }

    /// Scoped to the user, so two buyers' keys never collide; the length prefix keeps
    /// `(user, key)` pairs unambiguous whatever characters the user id has.
    pub fn idempotency(&self, c: &CampaignId, user: &UserId, key: &IdempotencyKey) -> String {
        format!("{}idem:{}:{}:{}", self.prefix(c), user.as_str().len(), user, key)
    }

    /// An order of an unsharded campaign (its shard 0).
    pub fn order(&self, order: &OrderId) -> String {
        format!("{}order:{}", self.prefix(&order.campaign()), order.key_part())
    }

    /// An order in the shard `tag` names: by its ref (`OrderId::key_part`), or by its
    /// whole id for orders of builds before derived ids.
    pub fn order_at(&self, tag: &CampaignId, order: &OrderId) -> String {
        format!("{}order:{}", self.prefix(tag), order.key_part())
    }

    /// The order a ref names, in the shard `tag` names (before its id exists).
    pub fn order_of_ref(&self, tag: &CampaignId, order: &OrderRef) -> String {
        let mut key = String::new();
        Self::order_of_ref_after(&self.prefix(tag), order, &mut key);
        key
    }

    /// [`Self::order_of_ref`] written into `out` (emptied first) from the shard's
    /// [`Self::prefix`].
    pub fn order_of_ref_after<'o>(prefix: &str, order: &OrderRef, out: &'o mut String) -> &'o str {
        Self::after(prefix, "order:", order.as_str(), out)
    }

    /// A shard's units on their way out: move id → `"<to shard> <sku> <units>"`.
    pub fn moves_out(&self, tag: &CampaignId) -> String {
        format!("{}moves", self.prefix(tag))
    }

    /// The moves a shard has received (each applied once).
    pub fn moves_in(&self, tag: &CampaignId) -> String {
        format!("{}moved-in", self.prefix(tag))
    }

    /// Pending order ids by deadline, as builds before the deadline list wrote them
    /// (and rebuilds still do); read with the list by `deadlines.lua`.
    pub fn pending(&self, c: &CampaignId) -> String {
        format!("{}pending", self.prefix(c))
    }

    /// New orders' ids in reservation (and so deadline) order; settled ones leave from
    /// the head as the expiry sweep meets them.
    pub fn deadlines(&self, c: &CampaignId) -> String {
        format!("{}deadlines", self.prefix(c))
    }

    /// What precedes an order id in its key, in the shard `tag` names.
    pub fn order_prefix(&self, tag: &CampaignId) -> String {
        format!("{}order:", self.prefix(tag))
    }

    pub fn outbox(&self, c: &CampaignId) -> String {
        format!("{}outbox", self.prefix(c))
    }

    /// Ids of outbox entries that carried no order, set aside by the relay.
    pub fn outbox_dead(&self, c: &CampaignId) -> String {
        format!("{}outbox-dead", self.prefix(c))
    }

    pub fn order_rate(&self, c: &CampaignId) -> String {
        format!("{}rate", self.prefix(c))
    }

    pub fn buyers(&self, c: &CampaignId) -> String {
        format!("{}buyers", self.prefix(c))
    }

    pub fn users(&self, c: &CampaignId) -> String {
        format!("{}users", self.prefix(c))
    }

    pub fn payment_event(&self, c: &CampaignId, event: &EventId) -> String {
        format!("{}payevt:{}", self.prefix(c), event)
    }

    /// Which order a payment event id belongs to, across every campaign and shard: a
    /// key of its own hash tag, claimed before the order's shard is asked.
    pub fn payment_event_claim(&self, event: &EventId) -> String {
        format!("{}:{{pe:{}}}", self.ns, event)
    }

    pub fn campaigns(&self) -> String {
        format!("{}:campaigns", self.ns)
    }

    pub fn notice_channel(&self) -> String {
        format!("{}:events", self.ns)
    }

    /// Where a shard's scripts send their notices: the shard's own channel on a cluster
    /// (`SPUBLISH`, the scripts tell it by its hash tag), else [`Self::notice_channel`].
    pub fn shard_notice_channel(&self, tag: &CampaignId) -> String {
        if self.shard_channels {
            format!("{}events", self.prefix(tag))
        } else {
            self.notice_channel()
        }
    }
}

/// The Redis Cluster hash slot of a key (CRC16 of its hash tag, mod 16384).
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

/// CRC16-XMODEM, the checksum Redis Cluster uses for key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_reference() {
        // The reference value from the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("{user1000}.followers"));
    }

    #[test]
    fn every_key_of_a_campaign_is_in_one_slot() {
        let ks = KeySpace::new("fs");
        let c = CampaignId::parse("spring-sale").unwrap();
        let user = UserId::parse("we{ir}d:user").unwrap();
        let key = IdempotencyKey::parse("k:1").unwrap();
        let order = OrderId::generate(&c);
        let event = EventId::parse("evt_1").unwrap();
        let sku = SkuId::parse("phone").unwrap();
        let keys = [
            ks.meta(&c),
            ks.stock(&c, &sku),
            ks.user(&c, &user),
            ks.idempotency(&c, &user, &key),
            ks.order(&order),
            ks.pending(&c),
            ks.outbox(&c),
            ks.buyers(&c),
            ks.users(&c),
            ks.order_rate(&c),
            ks.payment_event(&c, &event),
            ks.clone().with_shard_channels(true).shard_notice_channel(&c),
        ];
        let slot = hash_slot(&keys[0]);
        for k in &keys {
            assert_eq!(hash_slot(k), slot, "{k}");
            assert!(k.starts_with("fs:{c:spring-sale}:"), "{k}");
        }
        let other = CampaignId::parse("autumn").unwrap();
        assert_ne!(hash_slot(&ks.meta(&other)), slot);
        // The names a batch writes into one buffer are these same names.
        let order = OrderRef::derived("8000000000000000aaaa".into());
        let mut buf = String::from("left over");
        assert_eq!(KeySpace::stock_after(&ks.prefix(&c), &sku, &mut buf), "fs:{c:spring-sale}:stock:phone");
        assert_eq!(ks.stock(&c, &sku), "fs:{c:spring-sale}:stock:phone");
        assert_eq!(
            KeySpace::order_of_ref_after(&ks.prefix(&c), &order, &mut buf),
            "fs:{c:spring-sale}:order:8000000000000000aaaa"
        );
        assert_eq!(ks.order_of_ref(&c, &order), "fs:{c:spring-sale}:order:8000000000000000aaaa");
    }
}
