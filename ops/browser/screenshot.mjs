// A picture of the dashboard during a sale: waits for CAMPAIGN to exist, opens the
// dashboard on it, waits DELAY_MS while the sale runs, saves SHOT. Env: BASE,
// ADMIN_TOKEN, CAMPAIGN, SHOT, DELAY_MS (default 3000).
import { chromium } from "playwright-core";

const { BASE, ADMIN_TOKEN, CAMPAIGN, SHOT } = process.env;
const delay = Number(process.env.DELAY_MS || 3000);
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
for (let i = 0; i < 600; i++) {
  const r = await fetch(`${BASE}/admin/v1/campaigns/${CAMPAIGN}`, { headers: admin }).catch(() => null);
  if (r && r.ok) break;
  await new Promise((res) => setTimeout(res, 50));
}
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
                                        args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  await page.goto(`${BASE}/admin/#campaign=${CAMPAIGN}`);
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("#login-button");
  await page.waitForSelector(`#skus tr`);
  await page.waitForTimeout(delay);
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot ${SHOT}`);
} finally {
  await browser.close();
}
