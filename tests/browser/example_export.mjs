// The async export (examples/export) as people use it, on two clustered
// herald nodes: bob's page subscribes on node 1, the export worker (a
// separate process) publishes its progress through node 2, the app its
// outcome (through its outbox, also node 2). Carol is the other user. Then
// an export started while both nodes are down, finished while they are
// away, shows "ready" once they are back, and a worker killed mid-job
// shows "failed" at once, both without a reload. Started by
// tests/example_export.rs. Prints `ok - ...` per check.
import { readFile } from 'node:fs/promises';
import {
  app, heraldUrl, shots, check, sleep, until, person, logIn, cookieOf, claimsOf,
  call, expectError, main, ok, stopHerald, startHerald, restartApp,
} from './apps_common.mjs';

const COOKIE = 'export_session';
const node2Url = process.env.HERALD2_URL;
check(node2Url, 'HERALD2_URL must be set');
const topicOf = (name) => `https://example.app/users/${name}/jobs`;
const ROWS = 3000;

/**
 * Read a subscription to `base`'s hub for `ms`; answers the raw stream
 * text. `lastEventId: 'earliest'` asks for all history; `onOpen` is called
 * once the hub answered 200.
 */
async function streamAt(base, topics, { token, lastEventId, ms = 800, onOpen } = {}) {
  const url = new URL(`${base}/.well-known/mercure`);
  for (const t of topics) url.searchParams.append('topic', t);
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  const headers = { accept: 'text/event-stream' };
  if (token) headers.authorization = `Bearer ${token}`;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  let text = '';
  try {
    const resp = await fetch(url, { headers, signal: ctl.signal });
    check(resp.status === 200, `subscribe on ${base} answered ${resp.status}`);
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

/** The events (parsed data) of a raw stream. */
const eventsOf = (text) => text.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));

await main('export', async (browser) => {
  const bob = await person(browser);
  const carol = await person(browser);
  const b1 = await logIn(bob, 'bob');
  const c1 = await logIn(carol, 'carol');
  const bobMe = await b1.evaluate(() => fetch('/api/me').then((r) => r.json()));
  const carolMe = await c1.evaluate(() => fetch('/api/me').then((r) => r.json()));
  check(bobMe.hub === `${heraldUrl}/.well-known/mercure`, `bob's page subscribes on ${bobMe.hub}, not node 1`);
  check(new URL(node2Url).origin !== new URL(heraldUrl).origin, 'node 1 and node 2 should differ');
  check(new URL(app).origin !== new URL(heraldUrl).origin, 'the app and the hub should be on different origins');
  check(JSON.stringify(claimsOf(carolMe.token).mercure.subscribe) === JSON.stringify([topicOf('carol')]),
    `carol's token grants ${JSON.stringify(claimsOf(carolMe.token).mercure)}`);
  // Node 1 refuses the app's publisher tokens (another publisher key): what
  // bob's page receives can only come through node 2 and Redis.
  const refused = await fetch(`${heraldUrl}/.well-known/mercure`, {
    method: 'POST',
    headers: { authorization: `Bearer ${process.env.HERALD_TOKEN}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ topic: topicOf('bob'), data: '{"kind":"probe"}', private: 'on' }),
  });
  check(refused.status === 401, `node 1 answered ${refused.status} to a publish with the app's key`);
  ok('bob and carol logged in through the form; their pages\' streams are open on node 1, which refuses the app\'s publishers (401): the worker publishes on node 2');

  // Live listeners on bob's topic while his job runs: carol (her token) on
  // both nodes, an anonymous client, and bob's own token as the control.
  let opened = 0;
  const onOpen = () => opened++;
  const ms = 12_000;
  const live = Promise.all([
    streamAt(heraldUrl, [topicOf('bob')], { token: bobMe.token, ms, onOpen }),
    streamAt(heraldUrl, [topicOf('bob')], { token: carolMe.token, ms, onOpen }),
    streamAt(node2Url, [topicOf('bob')], { token: carolMe.token, ms, onOpen }),
    streamAt(heraldUrl, [topicOf('bob')], { ms, onOpen }),
  ]);
  await until('the live streams are open', () => opened === 4);

  // --- bob presses Export; the bar advances; the pop-up appears ----------
  await b1.fill('#rows', String(ROWS));
  const t0 = Date.now();
  await b1.click('#export');
  const seen = [];
  let popupAt = 0;
  await until('the ready pop-up', async () => {
    const v = await b1.evaluate(() => ({
      bar: document.querySelector('#jobs li progress')?.value ?? null,
      popup: !document.getElementById('popup').hidden,
    }));
    if (v.bar !== null && seen[seen.length - 1] !== v.bar) seen.push(v.bar);
    if (v.popup) popupAt = Date.now();
    return v.popup;
  }, 30_000);
  const middle = seen.filter((p) => p > 0 && p < 100);
  check(middle.length >= 4, `the bar showed only ${JSON.stringify(seen)}`);
  for (let i = 1; i < seen.length; i++) check(seen[i] > seen[i - 1], `the bar went backwards: ${JSON.stringify(seen)}`);
  check(seen[seen.length - 1] === 100, `the bar ended on ${seen[seen.length - 1]}`);
  ok(`bob's progress bar advanced through ${JSON.stringify(seen)} %, then the pop-up appeared (${popupAt - t0} ms after the click)`);

  const jobId = await b1.getAttribute('#popup', 'data-job');
  const href = await b1.getAttribute('#popup-link', 'href');
  check(href === `/api/exports/${jobId}/download`, `the pop-up links ${href}`);
  await b1.screenshot({ path: `${shots}/export.png` });
  const [download] = await Promise.all([b1.waitForEvent('download'), b1.click('#popup-link')]);
  const content = await readFile(await download.path(), 'utf8');
  const lines = content.trimEnd().split('\n');
  check(lines[0] === 'row,user,value', `the file starts ${JSON.stringify(lines[0])} (a spreadsheet reads line 1 as the header)`);
  check(lines.length === ROWS + 1, `the file has ${lines.length} lines, not ${ROWS + 1}`);
  check(lines[lines.length - 1].startsWith(`${ROWS},bob,`), `last line ${lines[lines.length - 1]}`);
  check(download.suggestedFilename() === `export-${jobId}.csv`, `file name ${download.suggestedFilename()}`);
  const status = await call('GET', `/api/exports/${jobId}`, { cookie: await cookieOf(bob, COOKIE) });
  check(status.status === 200 && status.body.state === 'ready', `status ${JSON.stringify(status)}`);
  ok(`the pop-up's link downloads export-${jobId.slice(0, 8)}….csv: ${ROWS} rows for bob, as the worker wrote them`);

  // --- isolation: carol sees nothing of bob's job, live or by replay ------
  const [bobLive, carolLive1, carolLive2, anonLive] = await live;
  const bobEvents = eventsOf(bobLive).filter((e) => e.job === jobId);
  check(bobEvents.some((e) => e.kind === 'ready') && bobEvents.filter((e) => e.kind === 'progress').length >= 5,
    `bob's own stream on node 1 lacks the job's events: ${bobLive}`);
  const workers = new Set(bobEvents.filter((e) => e.kind === 'progress').map((e) => e.worker));
  check(workers.size === 1, `progress from ${[...workers]} workers`);
  check(![...workers].includes(Number(process.env.APP_PID)), 'the app published the progress itself, not a worker process');
  check(bobEvents.filter((e) => e.kind === 'ready').length === 1, `bob got ${bobEvents.filter((e) => e.kind === 'ready').length} ready events`);
  for (const [who, text] of [['carol on node 1', carolLive1], ['carol on node 2', carolLive2], ['anonymous', anonLive]]) {
    check(!text.includes('data:'), `${who} got bob's events live: ${text}`);
  }
  const [carolReplay1, carolReplay2, anonReplay, bobReplay2] = await Promise.all([
    streamAt(heraldUrl, [topicOf('bob')], { token: carolMe.token, lastEventId: 'earliest' }),
    streamAt(node2Url, [topicOf('bob')], { token: carolMe.token, lastEventId: 'earliest' }),
    streamAt(node2Url, [topicOf('bob')], { lastEventId: 'earliest' }),
    streamAt(node2Url, [topicOf('bob')], { token: bobMe.token, lastEventId: 'earliest' }),
  ]);
  check(bobReplay2.includes(jobId), `bob's replay on node 2 lacks his job: ${bobReplay2}`);
  for (const [who, text] of [['carol on node 1', carolReplay1], ['carol on node 2', carolReplay2], ['anonymous', anonReplay]]) {
    check(!text.includes('data:'), `${who} replayed bob's events: ${text}`);
  }
  const carolJobs = await c1.evaluate(() => document.querySelectorAll('#jobs li').length);
  check(carolJobs === 0, `carol's page shows ${carolJobs} jobs`);
  check(await c1.isHidden('#popup'), 'carol\'s page shows a pop-up');
  ok(`carol sees nothing of bob's job: not live (node 1, node 2, anonymous), not by replay (last_event_id=earliest), not in her page; bob's token, the control, got ${bobEvents.length} events, the progress from worker process ${[...workers][0]} (the app is ${process.env.APP_PID}), the outcome once`);

  const carolCookie = await cookieOf(carol, COOKIE);
  await expectError('carol downloads bob\'s file', 403, 'another user', 'GET', `/api/exports/${jobId}/download`, { cookie: carolCookie });
  await expectError('carol reads bob\'s job', 403, 'another user', 'GET', `/api/exports/${jobId}`, { cookie: carolCookie });
  const anon = await call('GET', `/api/exports/${jobId}/download`);
  check(anon.status === 401, `an anonymous download answered ${anon.status}`);
  const carolList = await call('GET', '/api/exports', { cookie: carolCookie });
  check(carolList.status === 200 && carolList.body.jobs.length === 0, `carol's list: ${JSON.stringify(carolList.body)}`);
  ok('carol cannot download bob\'s file nor read his job (403), anonymous gets 401, her list is empty');

  // --- bad input: clear 4xx, and the page shows the message ---------------
  const bobCookie = await cookieOf(bob, COOKIE);
  await expectError('unknown job', 404, 'no export job', 'GET', `/api/exports/${'0'.repeat(32)}/download`, { cookie: bobCookie });
  await expectError('malformed job id', 400, 'not a job id', 'GET', '/api/exports/nope/download', { cookie: bobCookie });
  await expectError('malformed job id (status)', 400, 'not a job id', 'GET', '/api/exports/..%2F..%2Fetc', { cookie: bobCookie });
  await expectError('rows 0', 400, 'rows must be', 'POST', '/api/exports', { cookie: bobCookie, json: { rows: 0 } });
  await expectError('rows too many', 400, 'rows must be', 'POST', '/api/exports', { cookie: bobCookie, json: { rows: 10_000_000 } });
  await expectError('rows text', 400, 'rows must be', 'POST', '/api/exports', { cookie: bobCookie, json: { rows: 'lots' } });
  await expectError('not JSON', 415, 'Content-Type', 'POST', '/api/exports', { cookie: bobCookie, raw: 'rows=5' });
  await expectError('not logged in', 401, 'log in', 'POST', '/api/exports', { json: {} });
  await expectError('bad name', 400, 'not valid', 'POST', '/api/login', { json: { name: 'Bob Smith!' } });
  await b1.click('#popup-close');
  await b1.fill('#rows', '-3');
  await b1.click('#export');
  await until('the page shows the error', async () => (await b1.textContent('#error')).includes('rows must be'));
  check((await b1.evaluate(() => document.querySelectorAll('#jobs li').length)) === 1, 'a refused export appeared in the list');
  ok('bad input gets a clear 4xx: unknown job 404, malformed id 400, bad rows 400 (shown in the page), not JSON 415, not logged in 401');

  // --- an outage: the export runs while Herald is away ---------------------
  const stateOf = (id) => b1.evaluate((id) => document.querySelector(`#jobs li[data-id="${id}"] .state`)?.textContent, id);
  await stopHerald();
  await until('the page notices', async () => (await b1.textContent('#conn')) !== 'open', 10_000);
  await b1.fill('#rows', '500');
  await b1.click('#export');
  await until('the job is listed', async () => (await b1.evaluate(() => document.querySelectorAll('#jobs li').length)) === 2);
  check(await b1.isHidden('#error'), `starting an export with Herald down shows ${await b1.textContent('#error')}`);
  const downId = await b1.evaluate(() => document.querySelector('#jobs li').dataset.id);
  await until('the job finishes while Herald is down', async () =>
    (await call('GET', `/api/exports/${downId}`, { cookie: bobCookie })).body.state === 'ready', 15_000);
  check(await stateOf(downId) !== 'ready', 'the page cannot know yet');
  await startHerald();
  await until('the page shows ready once Herald is back', async () => (await stateOf(downId)) === 'ready', 30_000);
  check(!(await b1.isHidden('#popup')) && (await b1.getAttribute('#popup', 'data-job')) === downId, 'the pop-up is for the job');
  await b1.click('#popup-close');
  ok('an export started while both nodes were down answers at once, runs, and its page shows "ready" (and the pop-up) once Herald is back, without a reload');

  // --- a worker that dies mid-job: the page shows the failure when it happens
  await b1.fill('#rows', '800');
  await b1.click('#export');
  await until('the job is listed', async () => (await b1.evaluate(() => document.querySelectorAll('#jobs li').length)) === 3);
  const failId = await b1.evaluate(() => document.querySelector('#jobs li').dataset.id);
  // Its first progress event (0 %, at once) names the worker's process id;
  // the job lasts 4 s: kill it well before it ends.
  const events = await (async () => { const t = Date.now(); for (;;) {
    if (Date.now() - t > 3_000) throw new Error('no progress event with a worker pid within 3 s');
    const text = await streamAt(heraldUrl, [topicOf('bob')], { token: bobMe.token, lastEventId: 'earliest', ms: 150 });
    const mine = eventsOf(text).filter((e) => e.job === failId && e.worker);
    if (mine.length) return mine;
  } })();
  check((await call('GET', `/api/exports/${failId}`, { cookie: bobCookie })).body.state === 'running', 'the job ended before the kill');
  process.kill(events[0].worker, 'SIGKILL');
  const killedAt = Date.now();
  await until('the page shows the failure', async () => (await stateOf(failId) || '').startsWith('failed'), 15_000);
  const shown = await stateOf(failId);
  check(shown.includes('killed'), `the page says ${JSON.stringify(shown)}, not why`);
  ok(`a worker killed mid-job: bob's page shows "${shown}" ${Date.now() - killedAt} ms later, without a reload`);

  // --- the app restarts while a job runs: the worker's outcome still arrives
  await b1.fill('#rows', '600');
  await b1.click('#export');
  await until('the job is listed', async () => (await b1.evaluate(() => document.querySelectorAll('#jobs li').length)) === 4);
  const orphanId = await b1.evaluate(() => document.querySelector('#jobs li').dataset.id);
  await until('its progress shows', async () => /^[1-9]\d? %$/.test(await stateOf(orphanId) || ''), 10_000);
  // Herald stopped too, so the worker's own publish fails: the outcome can
  // reach the page only through the outbox the restarted app publishes.
  await stopHerald();
  await restartApp();
  await until('the job ends while Herald is down', async () =>
    (await call('GET', `/api/exports/${orphanId}`, { cookie: bobCookie })).body.state === 'ready', 15_000);
  check(await stateOf(orphanId) !== 'ready', 'the page cannot know yet');
  await startHerald();
  await until('the page shows ready, the app restarted meanwhile', async () => (await stateOf(orphanId)) === 'ready', 30_000);
  await b1.click('#popup-close');
  ok('the app restarted (SIGKILL) while a job ran and Herald was down: the worker went on and recorded its outcome in the outbox, the restarted app published it once Herald was back, and bob\'s open page shows "ready" without a reload');

  // --- an empty rows field exports what the form shows ---------------------
  const shownRows = Number(await b1.getAttribute('#rows', 'value'));
  const byDefault = await call('POST', '/api/exports', { cookie: bobCookie, json: {} });
  check(byDefault.status === 202 && byDefault.body.rows === shownRows,
    `an export without rows: ${JSON.stringify(byDefault.body)}; the form shows ${shownRows}`);
  ok(`an export without a row count exports ${shownRows} rows, the number the form shows`);
});
