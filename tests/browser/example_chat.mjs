// The chat (examples/chat) as people use it: alice and bob, two tabs each,
// talk; carol, a third user, cannot read them by guessing the topic, live
// or by replay; a message sent while Herald is stopped reaches every tab
// once it is back. Started by tests/example_chat.rs. Prints `ok - ...` per
// check.
import {
  app, hub, shots, check, sleep, until, person, openTab, ready, logIn, cookieOf, claimsOf,
  readStream, call, expectError, restartApp, main, ok, stopHerald, startHerald,
} from './apps_common.mjs';

const COOKIE = 'chat_session';
const AB = 'alice~bob';
const topicOf = (id) => `https://example.app/conversations/${id}`;

async function conversationsOf(page) {
  return page.$$eval('#conversations button', (bs) => bs.map((b) => b.dataset.id));
}

async function messagesOf(page) {
  return page.$$eval('#messages li', (lis) => lis.map((li) => li.querySelector('.text').textContent));
}

async function open(page, id) {
  await page.bringToFront();
  await page.waitForSelector(`#conversations button[data-id="${id}"]`, { timeout: 5_000 });
  await page.click(`#conversations button[data-id="${id}"]`);
}

async function say(page, text) {
  await page.bringToFront();
  await page.fill('#text', text);
  await page.click('#send-form button');
}

/** Every page shows exactly `want` in its open conversation. */
async function expectMessages(what, pages, want, ms) {
  for (const [n, page] of pages.entries()) {
    try {
      await until(`${what} (tab ${n})`, async () => JSON.stringify(await messagesOf(page)) === JSON.stringify(want), ms);
    } catch (e) {
      throw new Error(`${e.message}: shows ${JSON.stringify(await messagesOf(page))}`);
    }
  }
}

await main('chat', async (browser) => {
  const alice = await person(browser);
  const bob = await person(browser);
  const carol = await person(browser);
  const a1 = await logIn(alice, 'alice');
  const a2 = await ready(await openTab(alice));
  const b1 = await logIn(bob, 'bob');
  const b2 = await ready(await openTab(bob));
  const c1 = await logIn(carol, 'carol');
  ok('alice and bob logged in through the form (two tabs each), carol in one');

  // --- alice starts a conversation with bob; it appears in all their tabs
  await a1.bringToFront();
  await a1.fill('#with', 'bob');
  await a1.click('#start-form button');
  for (const page of [a1, a2, b1, b2]) await until('the conversation is listed', async () => (await conversationsOf(page)).includes(AB));
  for (const page of [a2, b1, b2]) await open(page, AB);
  await until('alice\'s first tab has it open', async () => (await a1.textContent('#title')).includes('bob'));
  await say(a1, 'hi bob');
  await expectMessages('everyone sees "hi bob"', [a1, a2, b1, b2], ['hi bob']);
  await say(b2, 'hi alice, what\'s up?');
  await expectMessages('bob\'s reply is in', [b2], ['hi bob', 'hi alice, what\'s up?']);
  await say(a2, 'lunch at noon?');
  const talk = ['hi bob', 'hi alice, what\'s up?', 'lunch at noon?'];
  await expectMessages('everyone sees the conversation', [a1, a2, b1, b2], talk);
  check((await conversationsOf(c1)).length === 0, `carol lists ${await conversationsOf(c1)}`);
  ok('alice starts a conversation with bob: it appears live in their four tabs; messages from any tab reach all four, in order');

  // --- carol talks to alice: a new conversation while alice's tabs are open
  await c1.bringToFront();
  await c1.fill('#with', 'alice');
  await c1.click('#start-form button');
  await until('carol has the conversation open', async () => (await c1.textContent('#title')).includes('alice'));
  await say(c1, 'psst, alice');
  await expectMessages('carol sees her message', [c1], ['psst, alice']);
  for (const page of [a1, a2]) {
    await until('alice lists carol', async () => (await conversationsOf(page)).includes('alice~carol'));
    await until('alice sees the unread mark', async () => page.$eval('#conversations button[data-id="alice~carol"]', (b) => b.classList.contains('unread')));
  }
  await open(a2, 'alice~carol');
  await expectMessages('alice reads carol', [a2], ['psst, alice']);
  await expectMessages('alice\'s other tab stays on bob', [a1], talk);
  await sleep(300);
  for (const page of [b1, b2]) check(JSON.stringify(await conversationsOf(page)) === JSON.stringify([AB]), `bob lists ${await conversationsOf(page)}`);
  ok('a new conversation (carol with alice) reaches alice\'s open tabs live (fresh token, resubscribed without loss); bob never sees it');

  // --- isolation: carol cannot read alice~bob, live or by replay -----------
  const carolMe = await c1.evaluate(() => fetch('/api/me').then((r) => r.json()));
  const bobMe = await b1.evaluate(() => fetch('/api/me').then((r) => r.json()));
  const granted = claimsOf(carolMe.token).mercure.subscribe;
  check(JSON.stringify(granted) === JSON.stringify(['https://example.app/chat/users/carol', topicOf('alice~carol')]),
    `carol's token grants ${JSON.stringify(granted)}`);
  check(claimsOf(bobMe.token).mercure.subscribe.includes(topicOf(AB)), 'bob\'s token lacks his conversation');
  const guesses = [[topicOf(AB)], ['https://example.app/conversations/{id}']];
  const replays = await Promise.all([
    ...guesses.map((t) => readStream(t, { token: carolMe.token, lastEventId: 'earliest' })),
    readStream([topicOf(AB)], { token: carolMe.token, lastEventId: 'earliest', header: true }),
    readStream([topicOf(AB)], { lastEventId: 'earliest' }),
    readStream([topicOf(AB)], { token: bobMe.token, lastEventId: 'earliest' }),
  ]);
  const bobReplay = replays.pop();
  check(talk.every((m) => bobReplay.includes(m)), `bob's replay: ${bobReplay}`);
  for (const r of replays.slice(0, 3)) check(!r.includes('hi bob') && !r.includes('lunch'), `carol's replay got: ${r}`);
  check(!replays[3].includes('data:'), `an anonymous replay got: ${replays[3]}`);
  let opened = 0;
  const onOpen = () => opened++;
  const live = Promise.all([
    readStream([topicOf(AB)], { token: carolMe.token, ms: 1000, onOpen }),
    readStream(['https://example.app/conversations/{id}'], { token: carolMe.token, ms: 1000, onOpen }),
    readStream([topicOf(AB)], { token: bobMe.token, ms: 1000, onOpen }),
  ]);
  await until('the live streams are open', () => opened === 3);
  await say(a1, 'the secret plan');
  const [carolExact, carolTemplate, bobLive] = await live;
  check(bobLive.includes('the secret plan'), `bob's live stream: ${bobLive}`);
  check(!carolExact.includes('secret') && !carolTemplate.includes('secret'), `carol's live streams got: ${carolExact} ${carolTemplate}`);
  const carolCookie = await cookieOf(carol, COOKIE);
  await expectError('carol posts into alice~bob', 404, 'no conversation', 'POST', `/api/conversations/${AB}/messages`,
    { cookie: carolCookie, json: { body: 'let me in' } });
  check((await conversationsOf(c1)).join() === 'alice~carol', `carol lists ${await conversationsOf(c1)}`);
  ok('carol cannot read alice~bob: her token lists only her conversations; guessing the topic (exact or {id} template) gives her nothing, live or by replay (last_event_id and Last-Event-ID: earliest), nor anonymous; posting into it is 404');

  // --- history on reload (from Herald), and after an app restart ----------
  talk.push('the secret plan');
  await expectMessages('everyone in alice~bob sees the plan', [a1, b1, b2], talk);
  await b1.reload();
  await ready(b1);
  await open(b1, AB);
  await expectMessages('bob\'s reloaded tab has the whole conversation', [b1], talk);
  await restartApp();
  await a2.reload();
  await ready(a2);
  check(JSON.stringify(await conversationsOf(a2)) === JSON.stringify([AB, 'alice~carol']), `alice lists ${await conversationsOf(a2)}`);
  await open(a2, AB);
  await expectMessages('alice\'s reloaded tab after the app restarted', [a2], talk);
  await say(b2, 'see you there');
  talk.push('see you there');
  await expectMessages('the reloaded tabs are live', [a1, a2, b1, b2], talk);
  ok('a reloaded tab gets the whole conversation back from Herald\'s history (resume from earliest), also after the app restarted; and is live again');

  // --- Herald down: a message sent meanwhile reaches every tab once back --
  await open(a1, 'alice~carol');
  await stopHerald();
  await until('the pages notice', async () => (await b1.textContent('#conn')) !== 'open', 10_000);
  await say(a2, 'sent while the hub was down');
  await until('alice\'s box clears (the app stored it)', async () => (await a2.inputValue('#text')) === '');
  check(await a2.isHidden('#error'), `sending with Herald down shows ${await a2.textContent('#error')}`);
  talk.push('sent while the hub was down');
  await startHerald();
  await expectMessages('every tab gets it once Herald is back', [a2, b1, b2], talk, 30_000);
  // Alice's first tab (on another conversation) got it at the same time.
  await sleep(1_000);
  await expectMessages('once each', [a2, b1, b2], talk);
  check(!(await a1.$eval(`#conversations button[data-id="${AB}"]`, (b) => b.classList.contains('unread'))),
    'alice\'s own message marked the conversation unread in her other tab');
  await open(a1, AB);
  await expectMessages('and alice\'s other tab', [a1], talk);
  ok('Herald stopped: a message is stored at once (no error); Herald back: all four tabs show it, once, with no reload; alice\'s own message does not mark the conversation unread in her other tab');

  // --- bad input in the page ---------------------------------------------
  await b1.bringToFront();
  await b1.fill('#text', '   ');
  await b1.click('#send-form button');
  await until('the page shows the empty-message error', async () => (await b1.textContent('#error')).includes('body must not be empty'));
  await b1.fill('#with', 'bob');
  await b1.click('#start-form button');
  await until('the page shows the self error', async () => (await b1.textContent('#error')).includes('another user than yourself'));
  await b1.fill('#with', 'nobody');
  await b1.click('#start-form button');
  await until('the page shows the unknown-user error', async () => (await b1.textContent('#error')).includes('no user named "nobody"'));
  ok('bad input in the page (empty message, yourself, unknown user) shows the server\'s clear message');

  // --- bad requests, curl-style --------------------------------------------
  const aliceCookie = await cookieOf(alice, COOKIE);
  const errors = [];
  errors.push(await expectError('no login', 401, 'log in', 'POST', `/api/conversations/${AB}/messages`, { json: { body: 'hi' } }));
  errors.push(await expectError('empty message', 400, 'body must not be empty', 'POST', `/api/conversations/${AB}/messages`, { cookie: aliceCookie, json: { body: '' } }));
  errors.push(await expectError('oversize message', 413, 'at most 2000', 'POST', `/api/conversations/${AB}/messages`, { cookie: aliceCookie, json: { body: 'x'.repeat(2001) } }));
  errors.push(await expectError('oversize request', 413, 'request too large: send at most 16 KiB', 'POST', `/api/conversations/${AB}/messages`, { cookie: aliceCookie, json: { body: 'x'.repeat(40_000) } }));
  errors.push(await expectError('unknown conversation', 404, 'no conversation', 'POST', '/api/conversations/alice~zed/messages', { cookie: aliceCookie, json: { body: 'hi' } }));
  errors.push(await expectError('yourself', 400, 'yourself', 'POST', '/api/conversations', { cookie: aliceCookie, json: { with: 'alice' } }));
  errors.push(await expectError('unknown user', 404, 'no user named', 'POST', '/api/conversations', { cookie: aliceCookie, json: { with: 'zed' } }));
  errors.push(await expectError('bad name', 400, 'not valid', 'POST', '/api/conversations', { cookie: aliceCookie, json: { with: '../bob' } }));
  errors.push(await expectError('not JSON', 400, 'invalid JSON', 'POST', '/api/conversations', { cookie: aliceCookie, raw: '{', contentType: 'application/json' }));
  errors.push(await expectError('no content type', 415, 'Content-Type', 'POST', '/api/conversations', { cookie: aliceCookie, raw: 'with=bob' }));
  ok(`bad requests get a clear 4xx: ${errors.length} cases (401 no login, 400 empty, 413 oversize, 404 unknown or not yours, ...)`);

  // --- the hub itself, as scenario 5 asks -----------------------------------
  const notSse = await fetch(`${hub}?topic=${encodeURIComponent(topicOf(AB))}`, { headers: { accept: 'application/json' } });
  check(notSse.status === 406, `Accept: application/json answered ${notSse.status}`);
  const forged = await fetch(`${hub}?topic=${encodeURIComponent(topicOf(AB))}`, { headers: { accept: 'text/event-stream', authorization: 'Bearer not.a.jwt' } });
  check(forged.status === 401, `a bad token answered ${forged.status}`);
  ok('the hub refuses a client that does not accept text/event-stream (406) and a bad token (401)');

  // --- rough edges: a 2,000-character word wraps; the page has an icon ------
  await open(c1, 'alice~carol');
  const word = 'w'.repeat(2000);
  await say(c1, word);
  await until('the long word is shown', async () => (await messagesOf(c1)).includes(word));
  const layout = await c1.evaluate(() => ({
    page: document.documentElement.scrollWidth,
    view: window.innerWidth,
    send: document.querySelector('#send-form button').getBoundingClientRect().right,
  }));
  check(layout.page <= layout.view && layout.send <= layout.view,
    `a long word pushes the page to ${layout.page} px (window ${layout.view}), the Send button to ${layout.send}`);
  const icon = await fetch(`${app}/favicon.ico`);
  check(icon.status === 200 && icon.headers.get('content-type') === 'image/svg+xml', `favicon.ico: ${icon.status}`);
  ok(`a 2,000-character word wraps inside its bubble (page ${layout.page} px wide in a ${layout.view} px window, Send at ${layout.send}); /favicon.ico is an icon`);

  await b1.evaluate(() => { document.getElementById('error').hidden = true; });
  await b1.fill('#with', '');
  await b1.screenshot({ path: `${shots}/chat.png` });
});
