// sustained: a constant arrival rate of RATE orders/s for DURATION seconds, single
// lines of one unit on a random sku; the stock is sized by the runner to run out
// before the end, so the run covers selling and sold-out alike.
// Env: RATE, DURATION, VUS, plus lib.js's.
import exec from 'k6/execution';
import { arrivalScenario, SKUS, order, randomUser } from './lib.js';

export const options = arrivalScenario('sustained', { rate: 3000, vus: 100 });

export default function () {
  const sku = SKUS[Math.floor(Math.random() * SKUS.length)];
  order(randomUser(), `u${exec.vu.idInTest}-${exec.vu.iterationInScenario}`, [{ sku_id: sku, quantity: 1 }]);
}

export function teardown() {
  console.log(`END ${Date.now()}`);
}
