// The notification center (examples/notifications) as people use it: alice
// and bob, two tabs each, carol later; through the page's forms and buttons;
// a notification and a "mark read" made while Herald is stopped reach every
// tab once it is back. Started by tests/example_notifications.rs. Prints
// `ok - ...` per check.
import {
  app, hub, shots, check, sleep, until, person, openTab, ready, logIn, cookieOf, claimsOf,
  readStream, call, expectError, restartApp, main, ok, stopHerald, startHerald,
} from './apps_common.mjs';

const COOKIE = 'notifications_session';
const topicOf = (name) => `https://example.app/users/${name}/notifications`;

/** What a tab shows: its inbox items (text, read or not) and its badge. */
async function view(page) {
  return page.evaluate(() => ({
    badge: document.getElementById('badge').textContent,
    items: [...document.querySelectorAll('#inbox li')].map((li) => ({
      id: Number(li.dataset.id),
      text: li.querySelector('.body').lastChild.textContent,
      unread: li.classList.contains('unread'),
    })),
  }));
}

const texts = (v) => v.items.map((i) => i.text);

/** Wait until every tab shows `badge` and exactly the items `want` ([text, unread]). */
async function expectView(what, pages, badge, want, ms) {
  for (const [n, page] of pages.entries()) {
    try {
      await until(`${what} (tab ${n})`, async () => {
        const v = await view(page);
        const got = JSON.stringify(v.items.map((i) => [i.text, i.unread]));
        return v.badge === String(badge) && got === JSON.stringify(want);
      }, ms);
    } catch (e) {
      throw new Error(`${e.message}: shows ${JSON.stringify(await view(page))}`);
    }
  }
}

async function send(page, to, body) {
  await page.bringToFront();
  await page.fill('#to', to);
  await page.fill('#body', body);
  await page.click('#send');
}

async function clickMarkRead(page, text) {
  await page.bringToFront();
  await page.locator('#inbox li', { hasText: text }).locator('button.mark-read').click();
}

await main('notifications', async (browser) => {
  const alice = await person(browser);
  const bob = await person(browser);

  // --- two users, two tabs each ---------------------------------------
  const a1 = await logIn(alice, 'alice');
  const a2 = await ready(await openTab(alice)); // already logged in: the cookie
  const b1 = await logIn(bob, 'bob');
  const b2 = await ready(await openTab(bob));
  for (const [page, who] of [[a1, 'alice'], [a2, 'alice'], [b1, 'bob'], [b2, 'bob']]) {
    check((await page.textContent('#who')).includes(who), `tab of ${who} shows ${await page.textContent('#who')}`);
  }
  const sameOrigin = new URL(app).origin === new URL(hub).origin;
  check(!sameOrigin, 'the app and the hub should be on different origins');
  ok('alice and bob logged in through the form, two tabs each; all four streams open (hub on another origin)');

  // --- a personal notification: every tab of the recipient, nobody else ---
  const t0 = Date.now();
  await send(a1, 'bob', 'Your export is ready');
  await expectView('bob sees the notification', [b1, b2], 1, [['Your export is ready', true]]);
  const latency = Date.now() - t0;
  await send(b2, 'alice', 'bob liked your post');
  await expectView('alice sees the like', [a1, a2], 1, [['bob liked your post', true]]);
  await sleep(300);
  for (const page of [b1, b2]) check(!texts(await view(page)).includes('bob liked your post'), 'bob sees a notification for alice');
  ok(`a personal notification reaches both tabs of its user (${latency} ms from the click), and no one else`);

  // --- a broadcast: everyone ---------------------------------------------
  await a1.fill('#body', 'Maintenance tonight at 22:00');
  await a1.click('#broadcast');
  await expectView('alice sees the broadcast', [a1, a2], 2, [['Maintenance tonight at 22:00', true], ['bob liked your post', true]]);
  await expectView('bob sees the broadcast', [b1, b2], 2, [['Maintenance tonight at 22:00', true], ['Your export is ready', true]]);
  ok('a broadcast reaches every tab of every user; badges count 2');

  // --- read state syncs across the user's tabs at once -------------------
  await clickMarkRead(b1, 'Your export is ready');
  await expectView('bob\'s tabs follow "mark read"', [b1, b2], 1, [['Maintenance tonight at 22:00', true], ['Your export is ready', false]]);
  await a2.click('#read-all');
  await expectView('alice\'s tabs follow "mark all read"', [a1, a2], 0, [['Maintenance tonight at 22:00', false], ['bob liked your post', false]]);
  await sleep(300);
  await expectView('bob keeps his own read state', [b1, b2], 1, [['Maintenance tonight at 22:00', true], ['Your export is ready', false]]);
  ok('"mark read" in one tab and "mark all read" in another: the user\'s other tab follows at once; read state is per user');

  // --- isolation: carol sees broadcasts, never another user's notifications
  const carol = await person(browser);
  const c1 = await logIn(carol, 'carol');
  await expectView('carol sees the broadcast only', [c1], 1, [['Maintenance tonight at 22:00', true]]);
  // No token anywhere: the page subscribes with its session cookie and
  // Herald asks the app (--auth-url) what that session may read.
  const carolMe = await c1.evaluate(() => fetch('/api/me').then((r) => r.json()));
  check(carolMe.token === undefined, `the app still mints a token: ${JSON.stringify(carolMe)}`);
  const aliceCookie = await cookieOf(alice, COOKIE);
  const bobCookie = await cookieOf(bob, COOKIE);
  const carolCookie = await cookieOf(carol, COOKIE);
  const carolSession = await call('GET', '/api/herald-session', { cookie: carolCookie });
  check(carolSession.status === 200
    && JSON.stringify(carolSession.body.subscribe) === JSON.stringify([topicOf('carol')])
    && carolSession.body.sub === 'carol',
  `the app tells Herald carol may read ${JSON.stringify(carolSession.body)}`);
  // A cookie the app did not sign: Herald answers 401, as the app does.
  const forged = await fetch(`${hub}?topic=${encodeURIComponent(topicOf('bob'))}`, {
    headers: { accept: 'text/event-stream', cookie: `${COOKIE}=${bobCookie.split('=')[1].slice(0, -4)}AAAA` },
  });
  check(forged.status === 401, `a forged session cookie: Herald answered ${forged.status}`);
  await forged.body?.cancel();
  // Carol (and an anonymous client) subscribe to bob's topic, asking for
  // all history: nothing. Bob's own session, as a control: his notifications.
  const [carolReplay, anonReplay, bobReplay] = await Promise.all([
    readStream([topicOf('bob')], { cookie: carolCookie, lastEventId: 'earliest' }),
    readStream([topicOf('bob')], { lastEventId: 'earliest' }),
    readStream([topicOf('bob')], { cookie: bobCookie, lastEventId: 'earliest' }),
  ]);
  check(bobReplay.includes('Your export is ready'), `bob's replay lacks his notification: ${bobReplay}`);
  check(!carolReplay.includes('data:'), `carol's replay of bob's topic got: ${carolReplay}`);
  check(!anonReplay.includes('data:'), `an anonymous replay of bob's topic got: ${anonReplay}`);
  // Live: carol listens on bob's topic while alice notifies bob.
  let opened = 0;
  const onOpen = () => opened++;
  const live = Promise.all([
    readStream([topicOf('bob')], { cookie: carolCookie, ms: 1000, onOpen }),
    readStream([topicOf('bob')], { cookie: bobCookie, ms: 1000, onOpen }),
  ]);
  await until('the live streams are open', () => opened === 2);
  const sent = await call('POST', '/api/notifications', { cookie: aliceCookie, json: { to: 'bob', body: 'Meeting moved to 3pm', type: 'calendar' } });
  check(sent.status === 201, `notify answered ${sent.status} ${JSON.stringify(sent.body)}`);
  const [carolLive, bobLive] = await live;
  check(bobLive.includes('Meeting moved to 3pm'), `bob's live stream lacks the notification: ${bobLive}`);
  check(!carolLive.includes('data:'), `carol's live stream of bob's topic got: ${carolLive}`);
  await expectView('bob sees the new notification', [b1, b2], 2,
    [['Meeting moved to 3pm', true], ['Maintenance tonight at 22:00', true], ['Your export is ready', false]]);
  await sleep(200);
  check(!texts(await view(c1)).includes('Meeting moved to 3pm'), 'carol\'s page shows bob\'s notification');
  // Nor can carol touch bob's inbox through the app.
  await expectError('carol marks bob\'s notification read', 404, 'no notification', 'POST',
    `/api/notifications/${sent.body.id}/read`, { cookie: carolCookie });
  ok('carol cannot read bob\'s notifications: her session (asked by Herald through --auth-url, no token) grants her topic only; a forged cookie gets 401; nothing on bob\'s topic for her or anonymous, live or by replay (last_event_id=earliest); 404 for his notification ids');

  // --- persistence: reload, and a restart of the app (SIGKILL) ----------
  const bobNow = [['Meeting moved to 3pm', true], ['Maintenance tonight at 22:00', true], ['Your export is ready', false]];
  await b1.reload();
  await ready(b1);
  await expectView('bob\'s inbox after a reload', [b1], 2, bobNow);
  await restartApp();
  await b2.reload();
  await ready(b2);
  await expectView('bob\'s inbox after the app restarted', [b2], 2, bobNow);
  // The restarted app still publishes, and the other tab follows.
  await clickMarkRead(b2, 'Meeting moved to 3pm');
  await expectView('bob\'s tabs after mark read', [b1, b2], 1,
    [['Meeting moved to 3pm', false], ['Maintenance tonight at 22:00', true], ['Your export is ready', false]]);
  ok('the inbox and its read state survive a reload and a restart of the app (SQLite); sync works after it');

  // --- Herald down: nothing lost, every tab catches up without a reload ---
  await stopHerald();
  await until('the pages notice', async () => (await b1.textContent('#conn')) !== 'open', 10_000);
  await send(a1, 'bob', 'Sent while the hub was down');
  await until('alice\'s form clears (the app stored it)', async () => (await a1.inputValue('#body')) === '');
  check(await a1.isHidden('#error'), `notifying with Herald down shows ${await a1.textContent('#error')}`);
  await clickMarkRead(b2, 'Maintenance tonight at 22:00');
  await sleep(300);
  check(await b2.isHidden('#error'), `mark read with Herald down shows ${await b2.textContent('#error')}`);
  await startHerald();
  const afterOutage = [['Sent while the hub was down', true], ['Meeting moved to 3pm', false],
    ['Maintenance tonight at 22:00', false], ['Your export is ready', false]];
  await expectView('bob\'s tabs catch up once Herald is back', [b1, b2], 1, afterOutage, 30_000);
  await sleep(500);
  await expectView('once each', [b1, b2], 1, afterOutage);
  ok('Herald stopped: a notification and a "mark read" are stored at once (no error); Herald back: both of bob\'s tabs show both, once each, with no reload');

  // --- CORS: the hub answers the app's origin, not an unlisted one -------
  const probe = (page) => page.evaluate((h) => fetch(`${h}?topic=https://example.app/broadcasts`, { headers: { accept: 'text/event-stream' } })
    .then((r) => { r.body.cancel(); return `read ${r.status}`; }, () => 'blocked'), hub);
  const listed = await probe(a1);
  const other = await openTab(alice, app.replace('127.0.0.1', 'localhost'));
  const unlisted = await probe(other);
  check(listed === 'read 200' && unlisted === 'blocked', `CORS: app origin ${listed}, unlisted origin ${unlisted}`);
  await other.close();
  ok('CORS: herald.js and the stream load from the hub for the app\'s origin (--cors-origins); an unlisted origin is blocked');

  // --- bad input in the page ----------------------------------------------
  await a1.bringToFront();
  await a1.fill('#body', '   ');
  await a1.fill('#to', 'bob');
  await a1.click('#send');
  await until('the page shows the empty-body error', async () => (await a1.textContent('#error')).includes('body must not be empty'));
  await send(a1, 'nobody', 'hello?');
  await until('the page shows the unknown-user error', async () => (await a1.textContent('#error')).includes('no user named "nobody"'));
  await send(a1, 'bob', 'x'.repeat(1001));
  await until('the page shows the too-long error', async () => (await a1.textContent('#error')).includes('at most 1000'));
  check(!(await a1.isHidden('#error')), 'the error is hidden');
  await a1.screenshot({ path: `${shots}/notifications-error.png` });
  ok('bad input in the form (empty body, unknown user, too long) shows the server\'s clear message');

  // --- bad requests, curl-style --------------------------------------------
  const errors = [];
  errors.push(await expectError('no login', 401, 'log in', 'POST', '/api/notifications', { json: { to: 'bob', body: 'hi' } }));
  errors.push(await expectError('empty body', 400, 'body must not be empty', 'POST', '/api/notifications', { cookie: aliceCookie, json: { to: 'bob', body: '' } }));
  errors.push(await expectError('no recipient', 400, 'to:', 'POST', '/api/notifications', { cookie: aliceCookie, json: { body: 'hi' } }));
  errors.push(await expectError('oversize body', 413, 'at most 1000', 'POST', '/api/notifications', { cookie: aliceCookie, json: { to: 'bob', body: 'x'.repeat(5000) } }));
  errors.push(await expectError('oversize request', 413, 'request too large: send at most 16 KiB', 'POST', '/api/broadcasts', { cookie: aliceCookie, json: { body: 'x'.repeat(40_000) } }));
  errors.push(await expectError('unknown notification', 404, 'no notification 999999', 'POST', '/api/notifications/999999/read', { cookie: aliceCookie }));
  errors.push(await expectError('id not a number', 400, 'not a number', 'POST', '/api/notifications/abc/read', { cookie: aliceCookie }));
  errors.push(await expectError('unknown user', 404, 'no user named', 'POST', '/api/notifications', { cookie: aliceCookie, json: { to: 'zed', body: 'hi' } }));
  errors.push(await expectError('bad type', 400, 'type', 'POST', '/api/notifications', { cookie: aliceCookie, json: { to: 'bob', body: 'hi', type: 'DROP TABLE' } }));
  errors.push(await expectError('not JSON', 400, 'invalid JSON', 'POST', '/api/broadcasts', { cookie: aliceCookie, raw: '{"body":', contentType: 'application/json' }));
  errors.push(await expectError('no content type', 415, 'Content-Type', 'POST', '/api/broadcasts', { cookie: aliceCookie, raw: 'body=hi' }));
  errors.push(await expectError('bad name', 400, 'not valid', 'POST', '/api/login', { json: { name: 'bob smith' } }));
  errors.push(await expectError('empty name', 400, 'must not be empty', 'POST', '/api/login', { json: { name: '' } }));
  errors.push(await expectError('forged cookie', 401, 'log in again', 'GET', '/api/notifications', { cookie: `${COOKIE}=${process.env.HERALD_TOKEN}` }));
  ok(`bad requests get a clear 4xx: ${errors.length} cases (401 no login, 400 empty body, 413 oversize, 404 unknown id, ...)`);

  await b1.bringToFront();
  await b1.screenshot({ path: `${shots}/notifications.png` });
});
