// Real Chromium on herald's status page (/ui/): it goes live on the hub's
// own status stream, and its numbers and charts follow what is published.
// Started by tests/browser_status.rs with HERALD_BASE, HERALD_TOKEN
// (publisher) and SCREENSHOT (where to save the picture).
// Exits 0 when every check passes; prints what failed otherwise.
import { chromium } from 'playwright-core';

const base = process.env.HERALD_BASE;
const token = process.env.HERALD_TOKEN;
const screenshot = process.env.SCREENSHOT;
if (!base || !token || !screenshot) {
  console.error('HERALD_BASE, HERALD_TOKEN and SCREENSHOT must be set');
  process.exit(2);
}
const hub = `${base}/.well-known/mercure`;
const topic = 'https://example.com/status-ui';
let published = 0;

async function publish(data) {
  const body = new URLSearchParams([['topic', topic], ['data', data]]);
  const resp = await fetch(hub, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body });
  if (resp.status !== 200) throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
  published += 1;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const watchdog = setTimeout(() => {
  console.error('status page test timed out after 90 s');
  process.exit(1);
}, 90_000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 560 } });
  const page = await context.newPage();
  const text = (id) => page.$eval(`#${id}`, (el) => el.textContent);
  const num = async (id) => Number((await text(id)).replace(/,/g, ''));
  const data = (id, key) => page.$eval(`#${id}`, (el, k) => Number(el.dataset[k]), key);

  // 1. The page goes live on /ui/stream and shows the hub's numbers at once.
  await page.goto(`${base}/ui/`);
  await page.waitForFunction(() => document.body.dataset.state === 'live' && Number(document.body.dataset.events) >= 1,
    null, { timeout: 10_000 });
  if ((await num('published_total')) !== 0) throw new Error(`published_total ${await text('published_total')}`);
  if ((await num('history-len')) !== 0) throw new Error(`history ${await text('history-len')}`);
  if (!/^\d+\.\d+\.\d+/.test(await text('version'))) throw new Error(`version ${await text('version')}`);
  console.log('ok - the status page goes live and shows the hub at once');

  // Three subscribers of the topic, in another tab, so there are deliveries.
  const readers = await context.newPage();
  await readers.goto(`${base}/healthz`);
  await readers.evaluate(([hubUrl, t]) => {
    window.got = 0;
    for (let i = 0; i < 3; i++) {
      const url = new URL(hubUrl);
      url.searchParams.append('match', t);
      const es = new EventSource(url);
      es.onmessage = () => { window.got += 1; };
    }
  }, [hub, topic]);
  await page.waitForFunction(() => Number(document.getElementById('subscribers').textContent) >= 4,
    null, { timeout: 10_000 });
  console.log('ok - the subscriber count follows connections (3 readers + this page)');

  // 2. Publish at a changing rate for a while: the totals and both charts follow.
  let publishing = true;
  const publisher = (async () => {
    for (let tick = 0; publishing; tick++) {
      const burst = 2 + Math.round(8 * (1 + Math.sin(tick / 4)));
      await Promise.all(Array.from({ length: burst }, (_, i) => publish(`tick ${tick} #${i}`)));
      await sleep(200);
    }
  })();
  // The picture in docs/img/status-ui.png, taken while updates flow.
  await sleep(8_000);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  await sleep(1_000);
  publishing = false;
  await publisher;
  await page.waitForFunction((n) => Number(document.getElementById('published_total').textContent.replace(/,/g, '')) === n,
    published, { timeout: 10_000 });
  await page.waitForFunction((n) => Number(document.getElementById('delivered_total').textContent.replace(/,/g, '')) === 3 * n,
    published, { timeout: 10_000 });
  const points = await data('pub-chart', 'points');
  const pubMax = await data('pub-chart', 'max');
  const delMax = await data('del-chart', 'max');
  if (points < 5) throw new Error(`only ${points} points on the publishes chart`);
  if (!(pubMax > 5)) throw new Error(`publishes/s chart peaks at ${pubMax}`);
  if (!(delMax >= 2.5 * pubMax)) throw new Error(`deliveries/s peak ${delMax} for publishes/s peak ${pubMax} and 3 readers`);
  // History holds what was published (the default size is far larger).
  if ((await num('history-len')) !== published) throw new Error(`history ${await text('history-len')} != ${published}`);
  const got = await readers.evaluate(() => window.got);
  if (got !== 3 * published) throw new Error(`readers got ${got} of ${3 * published}`);
  console.log(`ok - totals, history and both charts follow ${published} publishes (peak ${pubMax.toFixed(1)}/s, deliveries peak ${delMax.toFixed(1)}/s)`);

  // 3. Quiet again: the rate falls back to zero.
  await page.waitForFunction(() => document.getElementById('pub-rate').textContent === '0.0', null, { timeout: 5_000 });
  console.log('ok - publishes/s falls back to 0 when publishing stops');
} catch (e) {
  failed = true;
  console.error('not ok -', e.message);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
