// throughput: as many requests as VUS connections can push for DURATION seconds,
// every one the same order POST (a JWT, a fresh idempotency key, one line). The runner
// points it at the gateway (a sold-out campaign, or one with stock for reservations)
// and at the ceilings (bare axum handlers) in the same run. The client does the same
// work against every target: send, then count the status (201 → orders_created,
// 409 → sold_out, anything else → out_of_contract), so only the server side differs.
// Env: VUS, DURATION, plus lib.js's.
import http from 'k6/http';
import exec from 'k6/execution';
import { STANDARD_OPTIONS, BASE, CAMPAIGN, SKUS, ordersCreated, outOfContract, randomUser, soldOut } from './lib.js';

const VUS = Number(__ENV.VUS || 64);
const DURATION = Number(__ENV.DURATION || 10);
const URL = `${BASE}/api/v1/campaigns/${CAMPAIGN}/orders`;
// Keys differ between runs against the same campaign.
const RUN = __ENV.RUN || 't';
const BODY = JSON.stringify({ items: [{ sku_id: SKUS[0], quantity: 1 }] });

export const options = {
  ...STANDARD_OPTIONS,
  discardResponseBodies: true,
  scenarios: { throughput: { executor: 'constant-vus', vus: VUS, duration: `${DURATION}s` } },
};

let odd = 0;

export default function () {
  const user = randomUser();
  const res = http.post(URL, BODY, {
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${user.token}`,
      'idempotency-key': `${RUN}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`,
    },
    tags: { name: 'order' },
  });
  if (res.status === 201) ordersCreated.add(1);
  else if (res.status === 409) soldOut.add(1);
  else {
    outOfContract.add(1, { status: String(res.status) });
    if (odd++ < 20) console.log(`ODD order ${res.status} ${res.error || ''}`);
  }
}
