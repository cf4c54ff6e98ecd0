// spike: the sale opens under full load. The arrival rate jumps from 0 to RATE
// requests/s in one second and holds for DURATION seconds; users already pressing
// before `starts_at` are turned away (campaign_not_active) until it opens; a share of
// requests is sent again with the same idempotency key (a client retrying).
//
// RATE counts every request, retries included. Env: RATE, DURATION, RETRY_SHARE,
// VUS (pre-allocated), plus lib.js's.
import exec from 'k6/execution';
import { STANDARD_OPTIONS, SKUS, order, randomUser, retry } from './lib.js';

const RATE = Number(__ENV.RATE || 10000);
const DURATION = Number(__ENV.DURATION || 30);
const RETRY_SHARE = Number(__ENV.RETRY_SHARE || 0.1);
const ITERATIONS_PER_SEC = Math.max(1, Math.round(RATE / (1 + RETRY_SHARE)));
const VUS = Number(__ENV.VUS || 200);

export const options = {
  ...STANDARD_OPTIONS,
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: VUS,
      maxVUs: VUS * 5,
      stages: [
        { target: ITERATIONS_PER_SEC, duration: '1s' },
        { target: ITERATIONS_PER_SEC, duration: `${DURATION}s` },
      ],
    },
  },
};

export default function () {
  const user = randomUser();
  const key = `s${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const items = [{ sku_id: SKUS[0], quantity: 1 }];
  const first = order(user, key, items);
  if (Math.random() < RETRY_SHARE) retry(user, key, items, first);
}

export function teardown() {
  console.log(`END ${Date.now()}`);
}
