// Shared by the example apps' browser tests (example_*.mjs), started by
// tests/example_*.rs with APP_URL, HERALD_URL, SCREENSHOT_DIR, CHROMIUM.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const app = process.env.APP_URL;
export const heraldUrl = process.env.HERALD_URL;
export const shots = process.env.SCREENSHOT_DIR;
if (!app || !heraldUrl || !shots) {
  console.error('APP_URL, HERALD_URL and SCREENSHOT_DIR must be set');
  process.exit(2);
}
export const hub = `${heraldUrl}/.well-known/mercure`;

const started = Date.now();
/** Report a passed check, with the time since the start. */
export function ok(message) {
  console.log(`ok - ${message} [${((Date.now() - started) / 1000).toFixed(1)} s]`);
}

export function check(ok, message) {
  if (!ok) throw new Error(message);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(what, probe, ms = 5_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(40);
  }
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/** A person: a browser context of their own (cookies, storage). */
export function person(browser) {
  return browser.newContext({ viewport: { width: 960, height: 640 } });
}

/** Open the app in a new tab and wait until the page is ready. */
export async function openTab(context, url = app) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(url);
  return page;
}

export async function ready(page) {
  await page.waitForSelector('body[data-ready="yes"]', { timeout: 10_000 });
  await page.waitForSelector('body[data-conn="open"]', { timeout: 10_000 });
  return page;
}

/** Log in through the form, as a person types it. */
export async function logIn(context, name) {
  const page = await openTab(context);
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#name', name);
  await page.click('#login-form button');
  return ready(page);
}

/** The login cookie of a context, as a Cookie header for fetch. */
export async function cookieOf(context, name) {
  const c = (await context.cookies()).find((c) => c.name === name);
  check(c, `no ${name} cookie`);
  return `${c.name}=${c.value}`;
}

export function claimsOf(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

/**
 * Read a subscription to the hub for `ms` and return what came (the raw
 * stream text). `lastEventId`: 'earliest' asks for all history; `onOpen`
 * is called once the hub has answered 200 (the subscription is live).
 */
export async function readStream(topics, { token, cookie, lastEventId, header = false, ms = 800, onOpen } = {}) {
  const url = new URL(hub);
  for (const t of topics) url.searchParams.append('topic', t);
  const headers = { accept: 'text/event-stream' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (cookie) headers.cookie = cookie;
  if (lastEventId && header) headers['last-event-id'] = lastEventId;
  else if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  let text = '';
  try {
    const resp = await fetch(url, { headers, signal: ctl.signal });
    check(resp.status === 200, `subscribe answered ${resp.status}`);
    onOpen?.();
    const dec = new TextDecoder();
    for await (const chunk of resp.body) text += dec.decode(chunk, { stream: true });
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    clearTimeout(timer);
  }
  return text;
}

/** A request to the app; answers {status, body (parsed JSON or text)}. */
export async function call(method, path, { cookie, json, raw, contentType } = {}) {
  const headers = {};
  if (cookie) headers.cookie = cookie;
  let body;
  if (json !== undefined) {
    body = JSON.stringify(json);
    headers['content-type'] = 'application/json';
  } else if (raw !== undefined) {
    body = raw;
    if (contentType) headers['content-type'] = contentType;
  }
  const resp = await fetch(`${app}${path}`, { method, headers, body });
  const text = await resp.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: resp.status, body: parsed };
}

/** Expect a 4xx with a JSON error mentioning `words`. */
export async function expectError(what, status, words, method, path, options) {
  const r = await call(method, path, options);
  check(r.status === status, `${what}: got ${r.status} ${JSON.stringify(r.body)}, expected ${status}`);
  check(typeof r.body === 'object' && typeof r.body.error === 'string', `${what}: no JSON error: ${JSON.stringify(r.body)}`);
  check(r.body.error.toLowerCase().includes(words.toLowerCase()), `${what}: error ${JSON.stringify(r.body.error)} does not say ${JSON.stringify(words)}`);
  return r.body.error;
}

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
/** Have the Rust test kill the app (SIGKILL) and start it again. */
export async function restartApp() {
  console.log('@restart-app');
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'restarted') throw new Error(`restart: got ${JSON.stringify(value)}`);
}

/** Have the Rust test stop Herald (SIGTERM; the apps keep running). */
export async function stopHerald() {
  console.log('@stop-herald');
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'stopped') throw new Error(`stop herald: got ${JSON.stringify(value)}`);
}

/** Have the Rust test start Herald again: same port, same data dir. */
export async function startHerald() {
  console.log('@start-herald');
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'started') throw new Error(`start herald: got ${JSON.stringify(value)}`);
}

/** Log `name` in through the API; answers the session cookie (for `call`). */
export async function loginCookie(name) {
  const resp = await fetch(`${app}/api/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }),
  });
  check(resp.status === 200, `login ${name}: ${resp.status}`);
  return resp.headers.get('set-cookie').split(';')[0];
}

/** Run `body` with a watchdog; print `not ok` and exit 1 on failure. */
export async function main(name, body, limitMs = 90_000) {
  const watchdog = setTimeout(() => {
    console.log(`not ok - ${name} timed out after ${limitMs / 1000} s`);
    process.exit(1);
  }, limitMs);
  const browser = await launch();
  let failed = false;
  try {
    await body(browser);
  } catch (e) {
    failed = true;
    console.log(`not ok - ${e.stack || e}`);
  } finally {
    await browser.close();
    clearTimeout(watchdog);
  }
  process.exit(failed ? 1 : 0);
}
