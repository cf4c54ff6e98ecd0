//! Per-user request rate limits from each campaign's `max_user_requests_per_sec`.
//!
//! Counted per gateway process with governor's keyed GCRA limiter (one per campaign,
//! rebuilt when the threshold changes). With several gateways a user spread over all
//! of them gets up to that many times the threshold; route users to gateways by user
//! id to make it exact. `max_orders_per_sec`, which protects stock and downstream
//! systems, is counted in Redis across all gateways instead (`reserve.lua`).

use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;
use engine::domain::{CampaignId, UserId};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Users remembered per campaign before idle ones are dropped early.
const MAX_TRACKED_USERS: usize = 1_000_000;

#[derive(Default)]
pub struct UserRates {
    by_campaign: DashMap<CampaignId, (u32, Arc<DefaultKeyedRateLimiter<String>>)>,
    clock: DefaultClock,
}

impl UserRates {
    /// `Ok` if the user may make one more request now, else the seconds to wait.
    pub fn check(&self, campaign: &CampaignId, per_sec: Option<u32>, user: &UserId) -> Result<(), u64> {
        let Some(rate) = per_sec.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let limiter = self.limiter(campaign, rate);
        limiter.check_key(&user.as_str().to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    fn limiter(&self, campaign: &CampaignId, rate: NonZeroU32) -> Arc<DefaultKeyedRateLimiter<String>> {
        if let Some(entry) = self.by_campaign.get(campaign) {
            if entry.0 == rate.get() {
                return Arc::clone(&entry.1);
            }
        }
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(rate)));
        self.by_campaign.insert(campaign.clone(), (rate.get(), Arc::clone(&limiter)));
        limiter
    }

    /// Drops users whose limits have fully recovered (call about once a second).
    pub fn prune(&self) {
        for entry in self.by_campaign.iter() {
            let limiter = &entry.value().1;
            limiter.retain_recent();
            if limiter.len() > MAX_TRACKED_USERS {
                limiter.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_rate_waits_and_others_do_not() {
        let limits = UserRates::default();
        let c = CampaignId::parse("c").unwrap();
        let a = UserId::parse("a").unwrap();
        let b = UserId::parse("b").unwrap();
        assert!(limits.check(&c, Some(2), &a).is_ok());
        assert!(limits.check(&c, Some(2), &a).is_ok());
        assert_eq!(limits.check(&c, Some(2), &a), Err(1));
        assert!(limits.check(&c, Some(2), &b).is_ok());
        assert!(limits.check(&c, None, &a).is_ok(), "no threshold, no limit");
    }
}
