// herald.js (web/herald.js, served by herald at /herald.js) in real Chromium.
// Started by tests/browser_client.rs with HERALD_BASE, HERALD_TOKEN (a
// publisher token) and HERALD_JWT_KEY (to mint subscriber tokens with a
// chosen expiry). To restart the hub it prints `@restart` and waits for a
// line on stdin. Prints `ok - ...` per check; exits 0 when all pass.
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { SseParser, backoffDelay } from '../../web/herald.js';

const base = process.env.HERALD_BASE;
const publisherToken = process.env.HERALD_TOKEN;
const jwtKey = process.env.HERALD_JWT_KEY;
if (!base || !publisherToken || !jwtKey) {
  console.error('HERALD_BASE, HERALD_TOKEN and HERALD_JWT_KEY must be set');
  process.exit(2);
}
const hub = `${base}/.well-known/mercure`;
const pageUrl = `${base}/herald-js-test.html`;
// Fast reconnects keep the test short; the defaults are 500 ms .. 30 s.
const clientOptions = { minDelay: 100, maxDelay: 800 };

const watchdog = setTimeout(() => {
  console.error('not ok - herald.js browser test timed out after 120 s');
  process.exit(1);
}, 120_000);

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function restartHub() {
  console.log('@restart');
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'restarted') throw new Error(`restart: got ${JSON.stringify(value)}`);
}

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}
function mint(subscribe, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ mercure: { publish: [], subscribe }, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac('sha256', jwtKey).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** A subscriber token for user `sub`. */
function mintFor(sub, subscribe, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, mercure: { publish: [], subscribe }, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac('sha256', jwtKey).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

let published = 0;
async function publish(topic, extra = []) {
  published++;
  const body = new URLSearchParams([['topic', topic], ['data', `update ${published}`], ...extra]);
  const resp = await fetch(hub, { method: 'POST', headers: { authorization: `Bearer ${publisherToken}` }, body });
  if (resp.status !== 200) throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
  return (await resp.text()).trim();
}

async function subscribers() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('herald_subscribers '));
  return Number(line.split(' ')[1]);
}

async function until(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Subscriber count settles at exactly `n` (and stays there 500 ms). */
async function expectSubscribers(n) {
  await until(`herald_subscribers == ${n}`, async () => (await subscribers()) === n);
  await new Promise((r) => setTimeout(r, 500));
  const now = await subscribers();
  if (now !== n) throw new Error(`herald_subscribers is ${now}, expected ${n}`);
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// The test page: same origin as the hub, so it imports /herald.js from it.
const testPage = `<!doctype html><meta charset="utf-8"><title>herald.js test</title>
<script type="module">
  import { Herald } from '/herald.js';
  window.Herald = Herald;
  window.got = {};
  window.states = {};
  window.tokenRefreshes = 0;
  window.start = (options, subs) => {
    if (options.refresh) {
      delete options.refresh;
      options.onTokenExpired = async () => { window.tokenRefreshes++; return window.freshToken(); };
    }
    window.herald = new Herald(options);
    window.subs = {};
    for (const [name, topics, extra] of subs) {
      window.got[name] = [];
      window.states[name] = [];
      window.details ??= {};
      window.subs[name] = window.herald.subscribe(topics, {
        ...extra,
        onMessage: (u) => window.got[name].push(u.id),
        onState: (s, d) => {
          window.states[name].push(d.status ? s + ':' + d.status : s);
          (window.details[name] ??= []).push(d);
        },
      });
    }
  };
</script>`;

async function newContext(browser) {
  const context = await browser.newContext();
  await context.route(pageUrl, (route) => route.fulfill({ status: 200, contentType: 'text/html', body: testPage }));
  return context;
}

async function openTab(context, options, subs) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => typeof window.start === 'function');
  await page.evaluate(([o, s]) => window.start(o, s), [{ hub, ...clientOptions, ...options }, subs]);
  return page;
}

const stateOf = (page, name) => page.evaluate((n) => window.subs[n].state, name);
const gotOf = (page, name) => page.evaluate((n) => window.got[n], name);
const statesOf = (page, name) => page.evaluate((n) => window.states[n], name);
const isLeader = (page) => page.evaluate(() => window.herald.isLeader);

async function waitOpen(pages, name = 'main') {
  for (const page of pages) await until(`${name} open`, async () => (await stateOf(page, name)) === 'open');
}

/** Every page got exactly `ids` on subscription `name`, in order. */
async function expectAll(pages, ids, name = 'main') {
  for (const [i, page] of pages.entries()) {
    try {
      await until(`tab ${i} to receive ${ids.length} updates`, async () => (await gotOf(page, name)).length >= ids.length);
    } catch (e) {
      throw new Error(`${e.message}: has ${JSON.stringify(await gotOf(page, name))}, published ${JSON.stringify(ids)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
    const got = await gotOf(page, name);
    check(JSON.stringify(got) === JSON.stringify(ids), `tab ${i} got ${JSON.stringify(got)}, expected ${JSON.stringify(ids)}`);
  }
}

// --- the SSE parser, in node: the WHATWG algorithm's corner cases --------
function parserChecks() {
  const events = [];
  const ids = [];
  const retries = [];
  const p = new SseParser((e) => events.push(e), { onRetry: (ms) => retries.push(ms), onId: (id) => ids.push(id) });
  // CRLF, CR and LF line ends, split anywhere (a CR at a chunk's end then LF).
  const stream = ': comment\r\nid: 1\r\ndata: a\r\ndata:b\r\rdata\nevent: note\n\nid: 2\ndata:  c\r';
  for (const chunk of [stream.slice(0, 13), stream.slice(13, 30), stream.slice(30)]) p.feed(chunk);
  p.feed('\n\nretry: 7\nretry: x\nid: bad\0id\nid: 3\n\ndata: no end');
  const want = [
    { id: '1', type: 'message', data: 'a\nb', hasId: true },
    { id: '1', type: 'note', data: '', hasId: false },
    { id: '2', type: 'message', data: ' c', hasId: true },
  ];
  check(JSON.stringify(events) === JSON.stringify(want), `parser events ${JSON.stringify(events)}`);
  check(JSON.stringify(ids) === '["3"]' && JSON.stringify(retries) === '[7]', `parser ids ${ids} retries ${retries}`);
  for (let n = 1; n < 12; n++) {
    const d = backoffDelay(n, 500, 30_000);
    const ceiling = Math.min(30_000, 500 * 2 ** (n - 1));
    check(d >= ceiling / 2 && d <= ceiling, `backoff ${n}: ${d}`);
  }
  console.log('ok - SSE parser (CR/LF/CRLF split across chunks, comments, id/retry rules) and capped back-off');
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  parserChecks();

  // --- 1. eight tabs of one user: one stream on the hub, every update in every tab
  const user = 'https://example.com/users/8';
  const shared = await newContext(browser);
  const subscriber = mint([user], 3600);
  const tabs = [];
  for (let i = 0; i < 8; i++) tabs.push(await openTab(shared, { token: subscriber }, [['main', [user, 'https://example.com/news']]]));
  await waitOpen(tabs);
  await expectSubscribers(1);
  const leaders = (await Promise.all(tabs.map(isLeader))).filter(Boolean).length;
  check(leaders === 1, `${leaders} leader tabs`);
  const ids = [];
  ids.push(await publish(user, [['private', 'on']]));
  ids.push(await publish('https://example.com/news'));
  for (let i = 0; i < 3; i++) ids.push(await publish(i % 2 ? user : 'https://example.com/news', i % 2 ? [['private', 'on']] : []));
  await publish('https://example.com/elsewhere');
  await expectAll(tabs, ids);
  for (const [i, tab] of tabs.entries()) {
    const states = await statesOf(tab, 'main');
    check(states[0] === 'connecting' && states.at(-1) === 'open', `tab ${i} states ${states}`);
  }
  console.log('ok - 8 tabs over HTTP/1.1: herald_subscribers is exactly 1 and every tab got every update (public and private), once, in order');

  // A topic set only one tab asks for is a stream of its own, delivered to that tab only.
  await tabs[3].evaluate(() => {
    window.got.solo = [];
    window.subs.solo = window.herald.subscribe('https://example.com/solo', { onMessage: (u) => window.got.solo.push(u.id) });
  });
  await expectSubscribers(2);
  const solo = await publish('https://example.com/solo');
  await expectAll([tabs[3]], [solo], 'solo');
  check((await gotOf(tabs[4], 'main')).length === ids.length, 'the solo update leaked to another subscription');
  await tabs[3].evaluate(() => window.subs.solo.close());
  await expectSubscribers(1);
  console.log('ok - a topic set one tab asks for reaches that tab only, and its stream closes with it');

  // --- 2. closing the leader tab loses nothing
  const leaderIndex = (await Promise.all(tabs.map(isLeader))).indexOf(true);
  const rest = tabs.filter((_, i) => i !== leaderIndex);
  ids.push(await publish(user, [['private', 'on']]));
  ids.push(await publish('https://example.com/news'));
  await expectAll(rest, ids);
  await tabs[leaderIndex].close();
  // While the others elect a leader and it reconnects:
  ids.push(await publish('https://example.com/news'));
  ids.push(await publish(user, [['private', 'on']]));
  await until('a new leader', async () => (await Promise.all(rest.map(isLeader))).filter(Boolean).length === 1);
  await waitOpen(rest);
  await expectSubscribers(1);
  ids.push(await publish('https://example.com/news'));
  await expectAll(rest, ids);
  for (const [i, tab] of rest.entries()) {
    const states = await statesOf(tab, 'main');
    check(states.includes('reconnecting') && states.at(-1) === 'open', `tab ${i} states after takeover ${states}`);
  }
  console.log('ok - closing the leader tab: another takes over, 7 tabs get everything published before, during and after, once, in order');
  await shared.close();
  await expectSubscribers(0);

  // --- 3. hub restart: resume from the restarted hub's history
  const restartTopic = 'https://example.com/restart';
  const ctx3 = await newContext(browser);
  const pair = [await openTab(ctx3, {}, [['main', [restartTopic]]]), await openTab(ctx3, {}, [['main', [restartTopic]]])];
  await waitOpen(pair);
  const ids3 = [await publish(restartTopic), await publish(restartTopic)];
  await expectAll(pair, ids3);
  // Keep the client away from the hub until it has missed updates.
  const blocked = (url) => url.pathname === '/.well-known/mercure';
  await ctx3.route(blocked, (route) => route.abort('connectionrefused'));
  await restartHub();
  ids3.push(await publish(restartTopic));
  ids3.push(await publish(restartTopic));
  await ctx3.unroute(blocked);
  await waitOpen(pair);
  ids3.push(await publish(restartTopic));
  await expectAll(pair, ids3);
  await expectSubscribers(1);
  const states3 = await statesOf(pair[0], 'main');
  check(states3.includes('reconnecting') && states3.at(-1) === 'open', `states across restart ${states3}`);
  console.log('ok - hub restart: the client reconnects by itself and resumes from history (missed updates once, in order)');
  await ctx3.close();

  // --- 4. token expiry: 401, onTokenExpired, resume
  const privateTopic = 'https://example.com/users/401';
  const ctx4 = await newContext(browser);
  const tab4 = await ctx4.newPage();
  const ids4 = [];
  await tab4.exposeFunction('freshToken', async () => {
    // Published while the client is refused: it must come on resume.
    ids4.push(await publish(privateTopic, [['private', 'on']]));
    return mint([privateTopic], 3600);
  });
  await tab4.goto(pageUrl);
  await tab4.waitForFunction(() => typeof window.start === 'function');
  await tab4.evaluate(([o, s]) => window.start(o, s), [
    { hub, ...clientOptions, token: mint([privateTopic], 2), refresh: true },
    [['main', [privateTopic]]],
  ]);
  await waitOpen([tab4]);
  ids4.push(await publish(privateTopic, [['private', 'on']]));
  await expectAll([tab4], ids4);
  // Herald ends the stream when the token expires; the reconnect is refused.
  await until('the token refresh', async () => (await tab4.evaluate(() => window.tokenRefreshes)) > 0, 8000);
  await until('reopened', async () => (await stateOf(tab4, 'main')) === 'open' && ids4.length === 2);
  ids4.push(await publish(privateTopic, [['private', 'on']]));
  await expectAll([tab4], ids4);
  const states4 = await statesOf(tab4, 'main');
  check(states4.includes('reconnecting:401') && states4.at(-1) === 'open', `states across 401 ${states4}`);
  check((await tab4.evaluate(() => window.tokenRefreshes)) === 1, 'onTokenExpired called more than once');
  // The page learns why (the hub's reason) and the id of the hub's log line.
  const refused = (await tab4.evaluate(() => window.details.main)).find((d) => d.status === 401);
  check(/expired/.test(refused?.error ?? ''), `the reason reaches the page: ${JSON.stringify(refused)}`);
  check(typeof refused?.requestId === 'string' && refused.requestId.length > 0, `the request id reaches the page: ${JSON.stringify(refused)}`);
  console.log('ok - expired token: 401, onTokenExpired gives a fresh one, the stream resumes without loss');
  await ctx4.close();

  // --- 5. a fresh page resumes where the tab stopped (sessionStorage)
  const reloadTopic = 'https://example.com/reload';
  const ctx5 = await newContext(browser);
  const tab5 = await openTab(ctx5, {}, [['main', [reloadTopic]]]);
  await waitOpen([tab5]);
  const before = [await publish(reloadTopic), await publish(reloadTopic)];
  await expectAll([tab5], before);
  await tab5.goto(`${base}/healthz`);
  await expectSubscribers(0);
  const missed = [await publish(reloadTopic), await publish(reloadTopic)];
  await tab5.goto(pageUrl);
  await tab5.waitForFunction(() => typeof window.start === 'function');
  await tab5.evaluate(([o, s]) => window.start(o, s), [{ hub, ...clientOptions }, [['main', [reloadTopic]]]]);
  await waitOpen([tab5]);
  missed.push(await publish(reloadTopic));
  await expectAll([tab5], missed);
  console.log('ok - a fresh page in the same tab resumes from the last id it had (sessionStorage), nothing repeated');

  // The same with another tab holding the stream: the page that comes back
  // catches up from the leader's recent updates, the stream stays as it is.
  const other = await openTab(ctx5, {}, [['main', [reloadTopic]]]);
  await waitOpen([other]);
  const seen = [await publish(reloadTopic)];
  await expectAll([other], seen);
  await other.goto(`${base}/healthz`);
  const away = [await publish(reloadTopic), await publish(reloadTopic)];
  await other.goto(pageUrl);
  await other.waitForFunction(() => typeof window.start === 'function');
  await other.evaluate(([o, s]) => window.start(o, s), [{ hub, ...clientOptions }, [['main', [reloadTopic]]]]);
  await waitOpen([other]);
  away.push(await publish(reloadTopic));
  await expectAll([other], away);
  await expectSubscribers(1);
  console.log('ok - a fresh page joining a stream another tab holds catches up from the leader, nothing repeated');

  await other.close();
  await tab5.evaluate(() => window.subs.main.close());
  const states5 = await statesOf(tab5, 'main');
  check(JSON.stringify(states5) === '["connecting","open","closed"]', `states of a fresh page ${states5}`);
  await expectSubscribers(0);
  await ctx5.close();

  // --- 6. two users in one browser profile (a shared computer): no sharing
  const aliceTopic = 'https://example.com/users/alice/inbox';
  const ctx6 = await newContext(browser);
  const alice = await ctx6.newPage();
  const bob = await ctx6.newPage();
  for (const [tab, who, grants] of [[alice, 'alice', [aliceTopic]], [bob, 'bob', []]]) {
    await tab.goto(pageUrl);
    await tab.waitForFunction(() => typeof window.start === 'function');
    await tab.evaluate(([o, subs]) => window.start(o, subs), [
      { hub, ...clientOptions, token: mintFor(who, grants, 3600) },
      [['main', [aliceTopic]]],
    ]);
  }
  await waitOpen([alice, bob]);
  // Each is the leader of its own group: two streams, each with its own token.
  check(await isLeader(alice) && await isLeader(bob), 'each user leads its own tab group');
  await expectSubscribers(2);
  const secret = await publish(aliceTopic, [['private', 'on']]);
  await expectAll([alice], [secret]);
  await new Promise((r) => setTimeout(r, 500));
  const bobGot = await bob.evaluate(() => window.got.main);
  check(!bobGot.includes(secret), `bob's tab must not get alice's private update: ${bobGot}`);
  console.log("ok - two users in one browser profile: each has its own stream, bob's tab never sees alice's private updates");
  await ctx6.close();
} catch (e) {
  failed = true;
  console.log(`not ok - ${e.message}`);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(failed ? 1 : 0);
