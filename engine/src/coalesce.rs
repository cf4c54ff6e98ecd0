//! Coalesced reservations (group commit): concurrent reservations for one campaign
//! shard (the campaign itself when unsharded) are decided by one `reserve.lua` call.
//! There is no fixed wait: a request that finds its shard's lane idle starts a flush
//! at once (a quiet system answers as fast as with one call per order); requests
//! that arrive while a call is in flight queue up and leave together, up to
//! `engine.reserve_batch_max`, as soon as it returns. Before taking each batch the
//! flush yields to the runtime once: requests whose bytes have already arrived (the
//! runtime polls its sockets before it runs a yielded task again) are read and join
//! this batch instead of waiting for the next call. No timer is involved; with
//! nothing else to run the yield returns at once.
//!
//! Calls out together: a lane may have up to `engine.reserve_calls_in_flight` calls
//! out at once, but a further call leaves only once the queue holds as many orders as
//! the last call sent (or when a call returns). With one call out, Redis and the
//! gateway take turns (Redis decides a batch while the gateway waits for it, then the
//! gateway answers it while Redis waits); a second call fills those gaps, and because
//! it is never smaller than the one before, Redis pays a call's fixed cost no more
//! often per order. Calls out together are no different from two gateways' calls:
//! each is atomic, Redis runs them one after the other, and the local cache takes
//! their answers in any order (sold-out flags carry the stock's generation and the
//! buyers they require).
//!
//! Each order is still decided on its own inside the script. A failed call
//! (Redis down, a timeout) fails every request of its batch, and the script is atomic:
//! nothing of a batch is half-applied.
//!
//! Bounds: a lane's queue holds only requests that are in flight, so it never exceeds
//! the gateway's `gateway.max_in_flight` (past which requests get 503 before they
//! reach the engine); a batch is at most `engine.reserve_batch_max`; a lane's calls
//! out at most `engine.reserve_calls_in_flight`; one lane per campaign shard in use
//! (idle lanes are dropped every refresh).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use crate::domain::{CampaignId, IdempotencyKey, OrderLines, OrderRef, UserId};
use crate::error::{EngineError, Result};
use crate::scripts::reserve::ReserveReply;
use crate::store::StockStore;

/// One reservation waiting for its batch.
pub(crate) struct Waiting {
    pub(crate) order: OrderRef,
    pub(crate) user: UserId,
    pub(crate) key: IdempotencyKey,
    pub(crate) lines: OrderLines,
    /// The W3C `traceparent` of a sampled request (carried into its outbox event).
    pub(crate) trace: Option<Box<str>>,
    pub(crate) reply: oneshot::Sender<Result<ReserveReply>>,
}

/// A campaign's queue, whether a flush is running for it, and its calls out.
#[derive(Default)]
struct Lane {
    queue: Mutex<Vec<Waiting>>,
    flushing: AtomicBool,
    /// Script calls of this lane in flight.
    out: AtomicUsize,
    /// Orders the last call sent carries (while one is out, what a further call waits
    /// to match).
    last_size: AtomicUsize,
    /// Woken when a call returns, or when the queue grows to `last_size` while a call
    /// is out.
    wake: Notify,
}

/// The lanes of every campaign this process reserves in.
pub(crate) struct Coalescer {
    lanes: DashMap<CampaignId, Arc<Lane>>,
    batch_max: usize,
    calls_max: usize,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("lanes", &self.lanes.len())
            .field("batch_max", &self.batch_max)
            .field("calls_max", &self.calls_max)
            .finish()
    }
}

impl Coalescer {
    pub(crate) fn new(batch_max: usize, calls_max: usize) -> Self {
        Self { lanes: DashMap::new(), batch_max: batch_max.max(1), calls_max: calls_max.max(1) }
    }

    /// Drops the lanes with nothing queued, no flush running and no call out: one lane
    /// per campaign shard in use, not per shard ever reserved in. A request that took a
    /// lane just before it went still has it, and its flush runs on it as usual.
    pub(crate) fn prune(&self) {
        self.lanes.retain(|_, lane| {
            lane.flushing.load(Ordering::Acquire)
                || lane.out.load(Ordering::Acquire) > 0
                || !lock(&lane.queue).is_empty()
        });
    }

    /// Lanes held now.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Queues one reservation; starts a flush for its campaign if none runs.
    pub(crate) fn submit(self: &Arc<Self>, store: &Arc<StockStore>, campaign: &CampaignId, w: Waiting) {
        // The campaign id is cloned only for a lane's first request.
        let lane = match self.lanes.get(campaign) {
            Some(lane) => Arc::clone(lane.value()),
            None => Arc::clone(self.lanes.entry(campaign.clone()).or_default().value()),
        };
        let queued = {
            let mut q = lock(&lane.queue);
            q.push(w);
            q.len()
        };
        if !lane.flushing.swap(true, Ordering::AcqRel) {
            let (me, store, campaign) = (Arc::clone(self), Arc::clone(store), campaign.clone());
            tokio::spawn(async move { me.flush(&store, &campaign, lane).await });
        } else if queued == lane.last_size.load(Ordering::Acquire) {
            // The size a waiting flush may be waiting for; it decides (`may_send`).
            lane.wake.notify_one();
        }
    }

    /// Whether the lane may send a call now: none is out, or fewer than `calls_max`
    /// are and the queue holds as many orders as the last call sent (a further call
    /// never carries fewer, so calls out together cost Redis no more per order).
    fn may_send(&self, lane: &Lane) -> bool {
        let out = lane.out.load(Ordering::Acquire);
        out == 0
            || (out < self.calls_max && lock(&lane.queue).len() >= lane.last_size.load(Ordering::Acquire))
    }

    /// Sends batches until the lane is empty, each call in a task of its own.
    async fn flush(&self, store: &Arc<StockStore>, campaign: &CampaignId, lane: Arc<Lane>) {
        loop {
            // A wake-up stored while nobody waited makes one extra turn: harmless.
            while !self.may_send(&lane) {
                lane.wake.notified().await;
            }
            // Larger batches, not later ones: see the module's note (under wrk, worker
            // paused, calls went from ~17 to ~23 orders each).
            tokio::task::yield_now().await;
            let batch: Vec<Waiting> = {
                let mut q = lock(&lane.queue);
                let n = q.len().min(self.batch_max);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                lane.flushing.store(false, Ordering::Release);
                // A request queued between the drain and the store: carry on, unless
                // it started a flush of its own.
                if lock(&lane.queue).is_empty() || lane.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            lane.last_size.store(batch.len(), Ordering::Release);
            let out = CallOut::new(Arc::clone(&lane));
            let (store, campaign) = (Arc::clone(store), campaign.clone());
            tokio::spawn(async move {
                let _out = out;
                decide(&store, &campaign, batch).await;
            });
        }
    }
}

/// One script call of a lane out: counted from its start until its task ends, however
/// it ends (a call whose task panicked or was dropped would otherwise count as out
/// for good, and its lane would stop sending once `calls_max` such calls had piled up).
struct CallOut(Arc<Lane>);

impl CallOut {
    fn new(lane: Arc<Lane>) -> Self {
        lane.out.fetch_add(1, Ordering::AcqRel);
        Self(lane)
    }
}

impl Drop for CallOut {
    fn drop(&mut self) {
        self.0.out.fetch_sub(1, Ordering::AcqRel);
        self.0.wake.notify_one();
    }
}

/// `tag`: the shard's key identity (`shards.rs`), from which the campaign follows.
async fn decide(store: &StockStore, tag: &CampaignId, batch: Vec<Waiting>) {
    let requests: Vec<_> =
        batch.iter().map(|w| (&w.order, &w.user, &w.key, &w.lines, w.trace.as_deref())).collect();
    let outcome = store.reserve_batch(&tag.campaign_of_tag(), tag, &requests).await;
    match outcome {
        Ok(replies) => {
            for (w, reply) in batch.into_iter().zip(replies) {
                let _ = w.reply.send(reply);
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

/// What a request gets when its batch was lost without an answer (the process is
/// shutting down): the reservation may or may not have been made; a retry with the
/// same idempotency key finds out.
pub(crate) fn dropped() -> EngineError {
    EngineError::Unavailable("reservation batch dropped".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order_ids::OrderIds;

    fn queue(lane: &Lane, n: usize) {
        let ids = OrderIds::new(b"tests").unwrap();
        let campaign = CampaignId::parse("c").unwrap();
        for i in 0..n {
            let user = UserId::parse(&format!("u{i}")).unwrap();
            let key = IdempotencyKey::parse("k").unwrap();
            let order = ids.derive(&campaign, 0, &user, &key);
            let lines = OrderLines::parse(vec![("x".to_owned(), 1)]).unwrap();
            let (reply, _) = oneshot::channel();
            lock(&lane.queue).push(Waiting { order, user, key, lines, trace: None, reply });
        }
    }

    #[tokio::test]
    async fn a_call_whose_task_panics_is_no_longer_counted_out() {
        let lane = Arc::new(Lane::default());
        let out = CallOut::new(Arc::clone(&lane));
        assert_eq!(lane.out.load(Ordering::Acquire), 1);
        let task = tokio::spawn(async move {
            let _out = out;
            panic!("a call's task panics");
        });
        assert!(task.await.is_err());
        assert_eq!(lane.out.load(Ordering::Acquire), 0, "the lane may send again");
        // And the flush waiting for it was woken (the permit is stored).
        tokio::time::timeout(std::time::Duration::from_secs(1), lane.wake.notified()).await.expect("woken");
    }

    #[test]
    fn a_further_call_leaves_only_once_it_carries_as_many_orders_as_the_last() {
        let two = Coalescer::new(128, 2);
        let lane = Lane::default();
        queue(&lane, 1);
        assert!(two.may_send(&lane), "nothing out: the first order leaves at once");

        lane.out.store(1, Ordering::Release);
        lane.last_size.store(3, Ordering::Release);
        assert!(!two.may_send(&lane), "1 queued behind a call of 3");
        queue(&lane, 2);
        assert!(two.may_send(&lane), "3 queued behind a call of 3");

        lane.out.store(2, Ordering::Release);
        assert!(!two.may_send(&lane), "every call out");
        let one = Coalescer::new(128, 1);
        lane.out.store(1, Ordering::Release);
        assert!(!one.may_send(&lane), "one call at a time");
        lane.out.store(0, Ordering::Release);
        assert!(one.may_send(&lane));
    }
}
