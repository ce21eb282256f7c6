// Real Chromium, real EventSource, against a running herald.
// Started by tests/browser.rs with HERALD_BASE and HERALD_TOKEN (publisher).
// Exits 0 when every check passes; prints what failed otherwise.
import { chromium } from 'playwright-core';

const base = process.env.HERALD_BASE;
const token = process.env.HERALD_TOKEN;
const subscriberCookie = process.env.HERALD_SUBSCRIBER_TOKEN;
if (!base || !token) {
  console.error('HERALD_BASE and HERALD_TOKEN must be set');
  process.exit(2);
}
const hub = `${base}/.well-known/mercure`;

async function publish(fields) {
  const body = new URLSearchParams();
  for (const [k, v] of fields) body.append(k, v);
  const resp = await fetch(hub, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
    body,
  });
  if (resp.status !== 200) throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
  return (await resp.text()).trim();
}

const watchdog = setTimeout(() => {
  console.error('browser test timed out after 60 s');
  process.exit(1);
}, 60_000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const topic = 'https://example.com/hello';

  // 1. The demo page served by herald subscribes with EventSource.
  await page.goto(`${base}/?topic=${encodeURIComponent(topic)}`);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open');
  const id = await publish([['topic', topic], ['data', 'hello from herald']]);
  const first = await page.waitForSelector('.event');
  const text = await first.textContent();
  const eventId = await first.getAttribute('data-id');
  if (text !== 'hello from herald') throw new Error(`got data ${JSON.stringify(text)}`);
  if (eventId !== id) throw new Error(`lastEventId ${eventId} != published id ${id}`);
  console.log('ok - EventSource received a published update with its id');

  // 2. Multi-line data arrives as the browser's spec says (CR, LF, CRLF -> LF),
  //    and a custom event type reaches addEventListener.
  const got = page.evaluate((hubUrl) => new Promise((resolve) => {
    const url = new URL(hubUrl);
    url.searchParams.append('match', 'multi');
    const es = new EventSource(url);
    es.addEventListener('note', (e) => { es.close(); resolve({ data: e.data, id: e.lastEventId }); });
  }), hub);
  // Give the new EventSource a moment to connect before publishing.
  await page.waitForTimeout(300);
  const id2 = await publish([['topic', 'multi'], ['data', 'a\r\nb\rc\nd'], ['type', 'note']]);
  const res = await got;
  if (res.data !== 'a\nb\nc\nd' || res.id !== id2) throw new Error(`multi-line: ${JSON.stringify(res)}`);
  console.log('ok - multi-line data and event type round-trip in Chromium');

  // 3. A private update reaches a page whose cookie token allows it.
  if (subscriberCookie) {
    const url = new URL(base);
    await context.addCookies([{ name: 'mercureAuthorization', value: subscriberCookie, domain: url.hostname, path: '/' }]);
    const priv = page.evaluate((hubUrl) => new Promise((resolve) => {
      const url = new URL(hubUrl);
      url.searchParams.append('match', 'https://example.com/users/1');
      const es = new EventSource(url, { withCredentials: true });
      es.onmessage = (e) => { es.close(); resolve(e.data); };
    }), hub);
    await page.waitForTimeout(300);
    await publish([['topic', 'https://example.com/users/1'], ['data', 'for user 1'], ['private', 'on']]);
    const data = await priv;
    if (data !== 'for user 1') throw new Error(`private via cookie: ${data}`);
    console.log('ok - private update delivered to a page authenticated by cookie');
  }
} catch (e) {
  failed = true;
  console.error('not ok -', e.message);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
