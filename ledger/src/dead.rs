//! Dead letters: order events that can never apply, or that RabbitMQ dead-lettered after
//! their delivery limit, kept in MySQL for an operator to list and send back.

use sqlx::{MySql, QueryBuilder, Row};

use crate::db::{text, Db, Result};

/// One dead-lettered order, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub order_id: String,
    pub campaign_id: String,
    pub reason: String,
    pub at_ms: i64,
}

/// One dead-lettered order to record: the listing fields and the event as it travelled.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub letter: DeadLetter,
    pub event_json: String,
}

impl Db {
    /// Records dead-lettered orders (a later letter of the same order replaces the
    /// earlier: it carries the furthest state seen).
    pub async fn record_dead_letters(&self, letters: &[NewDeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO dead_letters (order_id, campaign_id, reason, at_ms, event, replay_requested) ",
            );
            q.push_values(letters, |mut b, l| {
                b.push_bind(&l.letter.order_id)
                    .push_bind(&l.letter.campaign_id)
                    .push_bind(&l.letter.reason)
                    .push_bind(l.letter.at_ms)
                    .push_bind(&l.event_json)
                    .push_bind(0);
            });
            q.push(
                " ON DUPLICATE KEY UPDATE reason = VALUES(reason), at_ms = VALUES(at_ms), event = VALUES(event), \
                 replay_requested = 0",
            );
            q.build().execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Dead letters, newest first, `limit` at most, after the `(at_ms, order_id)` cursor
    /// of the previous page; whether more remain.
    pub async fn dead_letter_page(
        &self,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, bool)> {
        self.bounded(async {
            let (at, id) = after.unwrap_or((i64::MAX, ""));
            let rows = sqlx::query(
                "SELECT order_id, campaign_id, reason, at_ms FROM dead_letters \
                 WHERE at_ms < ? OR (at_ms = ? AND order_id < ?) OR ? \
                 ORDER BY at_ms DESC, order_id DESC LIMIT ?",
            )
            .bind(at)
            .bind(at)
            .bind(id)
            .bind(after.is_none())
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            let mut page = rows
                .iter()
                .map(|r| {
                    Ok(DeadLetter {
                        order_id: text(r, 0)?,
                        campaign_id: text(r, 1)?,
                        reason: text(r, 2)?,
                        at_ms: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let more = page.len() > limit as usize;
            page.truncate(limit as usize);
            Ok((page, more))
        })
        .await
    }

    /// Asks for these dead letters (all, when `None`) to be sent back to be applied;
    /// returns how many were asked for.
    pub async fn request_replay(&self, order_ids: Option<&[String]>) -> Result<u64> {
        self.bounded(async {
            let done = match order_ids {
                None => {
                    sqlx::query("UPDATE dead_letters SET replay_requested = 1").execute(&self.pool).await?
                }
                Some([]) => return Ok(0),
                Some(ids) => {
                    let mut q = QueryBuilder::<MySql>::new(
                        "UPDATE dead_letters SET replay_requested = 1 WHERE order_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in ids {
                        list.push_bind(id);
                    }
                    q.push(")");
                    q.build().execute(&self.pool).await?
                }
            };
            Ok(done.rows_affected())
        })
        .await
    }

    /// Up to `limit` dead letters an operator asked to send back: (order id, event JSON).
    pub async fn replays_due(&self, limit: u32) -> Result<Vec<(String, String)>> {
        self.bounded(async {
            let rows =
                sqlx::query("SELECT order_id, event FROM dead_letters WHERE replay_requested = 1 LIMIT ?")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter().map(|r| Ok((text(r, 0)?, text(r, 1)?))).collect()
        })
        .await
    }

    /// Forgets dead letters that were sent back (published again, confirmed).
    pub async fn forget_dead_letters(&self, order_ids: &[String]) -> Result<()> {
        if order_ids.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut q = QueryBuilder::<MySql>::new(
                "DELETE FROM dead_letters WHERE replay_requested = 1 AND order_id IN (",
            );
            let mut list = q.separated(", ");
            for id in order_ids {
                list.push_bind(id);
            }
            q.push(")");
            q.build().execute(&self.pool).await?;
            Ok(())
        })
        .await
    }
}
