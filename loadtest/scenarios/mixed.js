// mixed: what a real sale sees after the first second. Orders of 1..3 lines (1..2
// units each); of the reservations, some are cancelled, some paid through signed
// callbacks (a share after a failed payment first, a share with the event replayed),
// the rest read back and left to expire when the payment window passes.
// Env: RATE (orders/s), DURATION, VUS, plus lib.js's.
import exec from 'k6/execution';
import { arrivalScenario, SKUS, cancel, getOrder, order, pay, randomUser } from './lib.js';

export const options = arrivalScenario('mixed', { rate: 500, vus: 100 });

function lines() {
  const n = 1 + Math.floor(Math.random() * Math.min(3, SKUS.length));
  const skus = [...SKUS].sort(() => Math.random() - 0.5).slice(0, n);
  return skus.map((sku_id) => ({ sku_id, quantity: 1 + Math.floor(Math.random() * 2) }));
}

export default function () {
  const user = randomUser();
  const key = `m${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const r = order(user, key, lines());
  if (!r) return;
  const dice = Math.random();
  if (dice < 0.15) {
    cancel(user, r.order_id);
  } else if (dice < 0.65) {
    if (dice < 0.2) pay(r, 'failed', `evt-fail-${r.order_id}`);
    const event = `evt-${r.order_id}`;
    pay(r, 'succeeded', event);
    if (dice > 0.6) pay(r, 'succeeded', event); // the provider delivers it twice
  } else {
    getOrder(user, r.order_id);
  }
}

export function teardown() {
  console.log(`END ${Date.now()}`);
}
