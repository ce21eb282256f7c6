// Real Chromium over https (a certificate from a test CA, trusted with
// ignoreHTTPSErrors): one page opens 12 EventSources to herald. Over
// HTTP/1.1 a browser allows 6 connections per origin, so the 7th would
// stall; over HTTP/2 every one shares one connection and receives every
// update. Started by tests/browser.rs with HERALD_BASE (https://...),
// HERALD_TOKEN (publisher) and NODE_EXTRA_CA_CERTS for node's own fetch.
import { chromium } from 'playwright-core';

const base = process.env.HERALD_BASE;
const token = process.env.HERALD_TOKEN;
if (!base || !token) {
  console.error('HERALD_BASE and HERALD_TOKEN must be set');
  process.exit(2);
}
const hub = `${base}/.well-known/mercure`;
const STREAMS = 12;

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
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const encodings = [];
  page.on('response', (r) => {
    if (r.url().startsWith(hub) && r.request().method() === 'GET') {
      encodings.push(r.headers()['content-encoding'] ?? 'none');
    }
  });
  await page.goto(`${base}/healthz`);
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  if (protocol !== 'h2') throw new Error(`the page came over ${protocol}, not h2`);
  console.log('ok - the page came over h2');

  await page.evaluate(({ hubUrl, n }) => {
    window.got = [];
    window.opened = 0;
    for (let i = 0; i < n; i++) {
      window.got.push([]);
      const url = new URL(hubUrl);
      url.searchParams.append('topic', 'https://example.com/h2/all');
      url.searchParams.append('topic', `https://example.com/h2/${i}`);
      const es = new EventSource(url);
      es.onopen = () => { window.opened++; };
      es.onmessage = (e) => window.got[i].push(e.data);
    }
  }, { hubUrl: hub, n: STREAMS });
  await page.waitForFunction((n) => window.opened === n, STREAMS, { timeout: 15_000 });
  console.log(`ok - ${STREAMS} EventSources open at once`);

  await publish([['topic', 'https://example.com/h2/all'], ['data', 'to-all']]);
  for (let i = 0; i < STREAMS; i++) {
    await publish([['topic', `https://example.com/h2/${i}`], ['data', `to-${i}`]]);
  }
  await page.waitForFunction((n) => window.got.every((g) => g.length === 2), STREAMS, { timeout: 15_000 });
  const got = await page.evaluate(() => window.got);
  for (let i = 0; i < STREAMS; i++) {
    if (got[i][0] !== 'to-all' || got[i][1] !== `to-${i}`) {
      throw new Error(`stream ${i} got ${JSON.stringify(got[i])}`);
    }
  }
  console.log(`ok - every one of the ${STREAMS} streams received every update meant for it, in order`);
  if (encodings.length < STREAMS || !encodings.every((e) => e === 'gzip')) {
    throw new Error(`the streams' Content-Encoding: ${JSON.stringify(encodings)}`);
  }
  console.log('ok - the streams came gzip-compressed (Content-Encoding: gzip) and EventSource decoded them');

  // herald.js reads a compressed stream too.
  await page.evaluate(async (hubUrl) => {
    const { Herald } = await import('/herald.js');
    window.hjs = [];
    const herald = new Herald({ hub: hubUrl });
    herald.subscribe('https://example.com/h2/hjs', { onMessage: (u) => window.hjs.push(u.data) });
  }, hub);
  const deadline = Date.now() + 15_000;
  let viaHjs = [];
  while (Date.now() < deadline) {
    await publish([['topic', 'https://example.com/h2/hjs'], ['data', 'via-herald-js']]);
    viaHjs = await page.evaluate(() => window.hjs);
    if (viaHjs.length > 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (viaHjs[0] !== 'via-herald-js') throw new Error(`herald.js got ${JSON.stringify(viaHjs)}`);
  const last = encodings[encodings.length - 1];
  if (encodings.length <= STREAMS || last !== 'gzip') {
    throw new Error(`herald.js's stream Content-Encoding: ${JSON.stringify(encodings)}`);
  }
  console.log('ok - herald.js read a gzip-compressed stream');
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.stack || e}`);
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
process.exit(failed ? 1 : 0);
