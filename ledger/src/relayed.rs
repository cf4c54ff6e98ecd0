//! How far the relay got, per outbox stream: the newest stream id it passed on
//! (`outbox_relayed`). The worker compares it with each live shard's stream to find a
//! shard that came back behind MySQL.

use std::collections::{HashMap, HashSet};

use engine::behind::StreamId;
use sqlx::Row;

use crate::db::{text, Db, Result};

impl Db {
    /// Records that the relay is about to pass on entries up to `id` of `stream` (a
    /// campaign's or a shard's tag). Only ever raises the recorded id.
    pub async fn record_relayed(&self, stream: &str, campaign: &str, id: StreamId) -> Result<()> {
        self.bounded(async {
            // `last_seq` first: its condition reads the `last_ms` not yet raised.
            sqlx::query(
                "INSERT INTO outbox_relayed (stream, campaign_id, last_ms, last_seq) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE \
                 last_seq = IF(VALUES(last_ms) > last_ms, VALUES(last_seq), \
                               IF(VALUES(last_ms) = last_ms, GREATEST(last_seq, VALUES(last_seq)), last_seq)), \
                 last_ms = GREATEST(last_ms, VALUES(last_ms))",
            )
            .bind(stream)
            .bind(campaign)
            .bind(id.ms)
            .bind(id.seq)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The recorded id of one stream (`None`: nothing relayed from it yet).
    pub async fn relayed_id(&self, stream: &str) -> Result<Option<StreamId>> {
        self.bounded(async {
            let row = sqlx::query("SELECT last_ms, last_seq FROM outbox_relayed WHERE stream = ?")
                .bind(stream)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| Ok(StreamId { ms: r.try_get(0)?, seq: r.try_get(1)? })).transpose()
        })
        .await
    }

    /// The recorded id of every stream of these campaigns, by stream.
    pub async fn relayed_ids(&self, campaigns: &[String]) -> Result<HashMap<String, StreamId>> {
        if campaigns.is_empty() {
            return Ok(HashMap::new());
        }
        self.bounded(async {
            let mut out = HashMap::new();
            for chunk in campaigns.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!(
                    "SELECT stream, last_ms, last_seq FROM outbox_relayed WHERE campaign_id IN ({marks})"
                );
                let mut q = sqlx::query(&sql);
                for c in chunk {
                    q = q.bind(c);
                }
                for r in q.fetch_all(&self.pool).await? {
                    let id = StreamId { ms: r.try_get(1)?, seq: r.try_get(2)? };
                    out.insert(text(&r, 0)?, id);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Which of these orders MySQL holds.
    pub async fn orders_present(&self, ids: &[String]) -> Result<HashSet<String>> {
        self.bounded(async {
            let mut out = HashSet::new();
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!("SELECT order_id FROM orders WHERE order_id IN ({marks})");
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                for r in q.fetch_all(&self.pool).await? {
                    out.insert(text(&r, 0)?);
                }
            }
            Ok(out)
        })
        .await
    }
}
