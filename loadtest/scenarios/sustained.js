// sustained: a constant arrival rate of RATE orders/s for DURATION seconds, single
// lines of one unit on a random sku; the stock is sized by the runner to run out
// before the end, so the run covers selling and sold-out alike.
// Env: RATE, DURATION, VUS, plus lib.js's.
import exec from 'k6/execution';
import { STANDARD_OPTIONS, SKUS, order, randomUser } from './lib.js';

const RATE = Number(__ENV.RATE || 3000);
const DURATION = Number(__ENV.DURATION || 30);
const VUS = Number(__ENV.VUS || 100);

export const options = {
  ...STANDARD_OPTIONS,
  scenarios: {
    sustained: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 5,
    },
  },
};

export default function () {
  const sku = SKUS[Math.floor(Math.random() * SKUS.length)];
  order(randomUser(), `u${exec.vu.idInTest}-${exec.vu.iterationInScenario}`, [{ sku_id: sku, quantity: 1 }]);
}

export function teardown() {
  console.log(`END ${Date.now()}`);
}
