// Shared by every scenario: users (JWTs issued by the runner), the order request,
// and the check of every answer against the contract.
//
// Environment (set by loadtest/run.py): BASE, CAMPAIGN, SKUS (comma-separated),
// TOKENS (JSON file of {sub, token}), WEBHOOK_SECRET, LOG_ORDERS (0 = count only).
import http from 'k6/http';
import crypto from 'k6/crypto';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

export const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
export const CAMPAIGN = __ENV.CAMPAIGN || 'c';
export const SKUS = (__ENV.SKUS || 'sku').split(',');
const TOKENS = new SharedArray('tokens', () => JSON.parse(open(__ENV.TOKENS)));
const LOG_ORDERS = __ENV.LOG_ORDERS !== '0';
const WEBHOOK_SECRET = __ENV.WEBHOOK_SECRET || 'dev-webhook-secret';

export const outOfContract = new Counter('out_of_contract');
export const ordersCreated = new Counter('orders_created');
export const replayMismatch = new Counter('replay_mismatch');
export const soldOut = new Counter('sold_out');

// Codes the contract allows on the order route, by status.
const ORDER_ERRORS = {
  404: ['campaign_not_found', 'sku_not_found'],
  409: ['sold_out', 'purchase_limit_exceeded', 'campaign_not_active'],
  429: ['rate_limited'],
};

export const STANDARD_OPTIONS = {
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

// Each VU draws its users from its own window of the token list (copied once at init:
// reading a SharedArray element costs a JSON decode). Windows of different VUs overlap,
// so one user may still have requests in flight on several connections at once.
const WINDOW = Math.min(TOKENS.length, Number(__ENV.USERS_PER_VU || 256));
const MINE = (() => {
  if (__VU === 0) return [];
  const start = Math.floor(Math.random() * TOKENS.length);
  return Array.from({ length: WINDOW }, (_, j) => TOKENS[(start + j) % TOKENS.length]);
})();

// A constant-arrival-rate scenario from RATE, DURATION and VUS (defaults per scenario).
export function arrivalScenario(name, defaults) {
  const rate = Number(__ENV.RATE || defaults.rate);
  const vus = Number(__ENV.VUS || defaults.vus);
  return {
    ...STANDARD_OPTIONS,
    scenarios: {
      [name]: {
        executor: 'constant-arrival-rate',
        rate,
        timeUnit: '1s',
        duration: `${Number(__ENV.DURATION || 30)}s`,
        preAllocatedVUs: vus,
        maxVUs: vus * 5,
      },
    },
  };
}

export function randomUser() {
  return MINE[Math.floor(Math.random() * MINE.length)];
}

let oddLogged = 0;
const soldOutLogged = {};

// One line of the console file per fact the runner checks afterwards.
function note(line) {
  if (LOG_ORDERS) console.log(line);
}

function offContract(what, res) {
  outOfContract.add(1, { status: String(res.status) });
  if (oddLogged++ < 20) console.log(`ODD ${what} ${res.status} ${String(res.body).slice(0, 200)}`);
}

function errorOf(res) {
  try {
    return JSON.parse(res.body).error;
  } catch (_) {
    return null;
  }
}

function errorCode(res) {
  const error = errorOf(res);
  return error && error.code;
}

export function sign(body) {
  const t = Math.floor(Date.now() / 1000);
  return `t=${t},v1=${crypto.hmac('sha256', WEBHOOK_SECRET, `${t}.${body}`, 'hex')}`;
}

// POST an order; returns the reservation on 201/200, null otherwise. Every answer
// outside the contract is counted (and the first few logged).
export function order(user, key, items, base = BASE) {
  const res = http.post(`${base}/api/v1/campaigns/${CAMPAIGN}/orders`, JSON.stringify({ items }), {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${user.token}`, 'idempotency-key': key },
    tags: { name: 'order' },
  });
  if (res.status === 201 || res.status === 200) {
    let r;
    try {
      r = JSON.parse(res.body);
    } catch (_) {
      offContract('order', res);
      return null;
    }
    if (!r.order_id || r.status !== 'pending_payment' || r.campaign_id !== CAMPAIGN) {
      offContract('order', res);
      return null;
    }
    if (res.status === 201) {
      ordersCreated.add(1);
      note(`ORDER ${r.order_id} ${user.sub} ${r.items.map((l) => `${l.sku_id}:${l.quantity}`).join(',')}`);
    }
    r.replayed = res.status === 200;
    return r;
  }
  const error = errorOf(res);
  const code = error && error.code;
  if (!(ORDER_ERRORS[res.status] || []).includes(code)) {
    offContract('order', res);
  } else if (code === 'sold_out') {
    soldOut.add(1);
    const sku = (String(error.message).match(/^sku (\S+) is sold out/) || [])[1];
    if (sku && !soldOutLogged[sku]) {
      soldOutLogged[sku] = true;
      note(`SOLDOUT ${sku}`);
    }
  }
  return null;
}

// The same request again with the same key: a reservation must come back as a 200
// with the same order; anything else in the contract is accepted.
export function retry(user, key, items, first) {
  const again = order(user, key, items);
  if (first && (!again || !again.replayed || again.order_id !== first.order_id)) {
    replayMismatch.add(1);
    console.log(`REPLAY-MISMATCH ${first.order_id} ${again ? again.order_id : 'none'}`);
  }
}

export function cancel(user, orderId) {
  const res = http.post(`${BASE}/api/v1/orders/${orderId}/cancel`, null, {
    headers: { authorization: `Bearer ${user.token}` },
    tags: { name: 'cancel' },
  });
  if (res.status === 200 && JSON.parse(res.body).status === 'cancelled') {
    note(`CANCEL ${orderId}`);
    return true;
  }
  // Too late (expired in between) is in the contract.
  if (res.status === 409 && errorCode(res) === 'order_not_cancellable') return false;
  offContract('cancel', res);
  return false;
}

export function getOrder(user, orderId) {
  const res = http.get(`${BASE}/api/v1/orders/${orderId}`, {
    headers: { authorization: `Bearer ${user.token}` },
    tags: { name: 'get' },
  });
  if (res.status !== 200 || JSON.parse(res.body).order_id !== orderId) offContract('get', res);
}

// A signed payment callback; `succeeded` on a pending order pays it.
export function pay(reservation, status, eventId) {
  const body = JSON.stringify({
    event_id: eventId,
    order_id: reservation.order_id,
    amount_cents: reservation.total_cents,
    status,
  });
  const res = http.post(`${BASE}/api/v1/payments/callback`, body, {
    headers: { 'content-type': 'application/json', 'flashsale-signature': sign(body) },
    tags: { name: 'callback' },
  });
  if (res.status !== 200) {
    offContract('callback', res);
    return null;
  }
  const st = JSON.parse(res.body).order_status;
  if (status === 'succeeded' && st === 'paid') note(`PAID ${reservation.order_id}`);
  return st;
}
