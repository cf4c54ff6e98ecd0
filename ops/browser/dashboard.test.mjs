// The operator dashboard in a real browser (Debian's Chromium, headless, driven by
// playwright-core): token asked once and kept out of the URL, a launched campaign
// listed, its counters move while orders arrive, tuning through the page changes what
// the API reports, a refused change shows the API's message, ending the sale asks for
// confirmation. Nothing is loaded from another host. Exits non-zero on the first
// failed check. Env: BASE, ADMIN_TOKEN, CAMPAIGN, TOKENS (JSON list of storefront
// JWTs), SHOT (screenshot path).
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const { BASE, ADMIN_TOKEN, CAMPAIGN, TOKENS, SHOT } = process.env;
const tokens = JSON.parse(readFileSync(TOKENS, "utf8"));
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
let step = "start";

function check(ok, what) {
  if (!ok) throw new Error(`${step}: ${what}`);
  console.log(`  ok  ${step}: ${what}`);
}

async function campaign() {
  const r = await fetch(`${BASE}/admin/v1/campaigns/${CAMPAIGN}`, { headers: admin });
  return r.json();
}

async function order(i) {
  const r = await fetch(`${BASE}/api/v1/campaigns/${CAMPAIGN}/orders`, {
    method: "POST",
    headers: { Authorization: `Bearer ${tokens[i % tokens.length]}`, "Idempotency-Key": `browser-${i}`,
               "Content-Type": "application/json" },
    body: JSON.stringify({ items: [{ sku_id: "sku0", quantity: 1 }] }),
  });
  return r.status;
}

async function until(what, fn, ms = 8000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 150));
  }
  check(false, `${what} (timed out)`);
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
                                        args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const elsewhere = [];
  page.on("request", (req) => { if (!req.url().startsWith(BASE)) elsewhere.push(req.url()); });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));

  step = "login";
  await page.goto(`${BASE}/admin/`);
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#token", "not-the-token");
  await page.click("#login-button");
  await page.waitForSelector("#error:has-text('refused')");
  check(true, "a wrong token is refused with a message");
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#login-button");
  await page.waitForSelector(`tr[data-campaign="${CAMPAIGN}"]`);
  check(true, "the launched campaign is listed");
  check(!page.url().includes(ADMIN_TOKEN), "the token is not in the URL");
  await page.waitForSelector("#dead:not([hidden])");
  check(true, "the dead letters are shown (none yet)");

  step = "live";
  await page.click(`tr[data-campaign="${CAMPAIGN}"]`);
  await page.waitForSelector(`#skus tr[data-sku="sku0"]`);
  const reservedBefore = Number((await page.textContent(`#skus tr[data-sku="sku0"] .reserved`)).replace(/,/g, ""));
  let sent = 0;
  const sender = (async () => {
    for (let i = 0; i < 120; i++) {
      if ((await order(i)) === 201) sent++;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await until("the reserved counter moves", async () =>
    Number((await page.textContent(`#skus tr[data-sku="sku0"] .reserved`)).replace(/,/g, "")) > reservedBefore);
  await until("orders per second shows the orders", async () => {
    const v = Number((await page.textContent("#t-orders")).replace(/,/g, ""));
    return v > 0;
  });
  await until("latency shows", async () => (await page.textContent("#t-p99")).includes("ms"));
  await page.waitForTimeout(2000); // a few more points on the charts, orders still arriving
  await page.screenshot({ path: SHOT, fullPage: true });
  check(true, `screenshot ${SHOT} (during the sale)`);
  await sender;
  check(sent > 0, `${sent} orders granted while the page watched`);
  await until("every granted order shows as reserved", async () =>
    Number((await page.textContent(`#skus tr[data-sku="sku0"] .reserved`)).replace(/,/g, "")) === reservedBefore + sent);

  step = "tune";
  await page.fill("#tune-max-orders", "7");
  await page.fill("#tune-max-user", "");
  await page.fill("#tune-limit", "3");
  await page.click("#tune-apply");
  await page.waitForSelector("#notice:has-text('Tuned')");
  await page.waitForSelector("#change-rows tr:has-text('tune')");
  check(true, "the tuning is in the campaign's changes, with who made it");
  let c = await campaign();
  check(c.thresholds.max_orders_per_sec === 7 && c.thresholds.max_user_requests_per_sec === null
        && c.per_user_limit === 3, "the API reports the tuned thresholds");

  step = "refused";
  await page.fill("#tune-limit", "0");
  await page.click("#tune-apply");
  await page.waitForSelector("#error:has-text('invalid_request')");
  const message = await page.textContent("#error");
  check(message.includes("per_user_limit"), `the API's message is shown: ${message.trim()}`);
  c = await campaign();
  check(c.per_user_limit === 3, "a refused change changes nothing");

  step = "end";
  let asked = "";
  page.once("dialog", (d) => { asked = d.message(); d.accept(); });
  await page.click("#end-now");
  await page.waitForSelector("#notice:has-text('Ended')");
  check(asked.includes(CAMPAIGN), "ending asks for confirmation first");
  c = await campaign();
  check(c.status === "ended", "the API reports the sale ended");
  await until("the page shows it ended", async () => (await page.textContent("#t-status")) === "ended");

  step = "page";
  check(elsewhere.length === 0, `no request to another host (${elsewhere.join(", ") || "none"})`);
  check(pageErrors.length === 0, `no script errors (${pageErrors.join("; ") || "none"})`);
} finally {
  await browser.close();
}
console.log("dashboard browser test: passed");
