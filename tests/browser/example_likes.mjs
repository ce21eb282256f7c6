// Live likes and comments (examples/likes, scenario 2) as people use it:
// alice and bob with the page open (bob in two tabs), comments added and
// liked through the page's buttons, one like per person, every page
// re-ranked at once; then Herald stopped while the app runs, a comment and
// a like made meanwhile, Herald started again: every open page shows both,
// once each, without a reload. Started by tests/example_likes.rs (with a
// redis-server of its own). Prints `ok - ...` per check.
import {
  app, hub, shots, check, sleep, until, person, openTab, ready, call, expectError, restartApp, main, ok,
  stopHerald, startHerald, loginCookie,
} from './apps_common.mjs';

/** What a tab shows: the comments in order, [body, likes]. */
function view(page) {
  return page.evaluate(() => [...document.querySelectorAll('#comments li')].map((li) => [
    li.querySelector('.body').textContent, Number(li.querySelector('.likes').textContent.split(' ')[0]),
  ]));
}

async function expectView(what, pages, want, ms) {
  for (const [n, page] of pages.entries()) {
    try {
      await until(`${what} (tab ${n})`, async () => JSON.stringify(await view(page)) === JSON.stringify(want), ms);
    } catch (e) {
      throw new Error(`${e.message}: shows ${JSON.stringify(await view(page))}, expected ${JSON.stringify(want)}`);
    }
  }
}

async function comment(page, body) {
  await page.bringToFront();
  await page.fill('#body', body);
  await page.click('#add');
}

async function click(page, text, button) {
  await page.bringToFront();
  await page.locator('#comments li', { hasText: text }).locator(`button.${button}`).click();
}

/** A person logged in as `name` (the app's cookie in their browser). */
async function member(browser, name) {
  const context = await person(browser);
  const r = await context.request.post(`${app}/api/login`, { data: { name } });
  check(r.status() === 200, `login ${name}: ${r.status()}`);
  return context;
}

const idOf = async (text) => (await call('GET', '/api/comments')).body.comments.find((c) => c.body === text).id;

await main('likes', async (browser) => {
  const alice = await member(browser, 'alice');
  const bob = await member(browser, 'bob');
  const a = await ready(await openTab(alice));
  const b1 = await ready(await openTab(bob));
  const b2 = await ready(await openTab(bob));
  const all = [a, b1, b2];
  check(new URL(app).origin !== new URL(hub).origin, 'the app and the hub should be on different origins');
  await expectView('an empty list', all, []);
  const visitor = await ready(await openTab(await person(browser)));
  check(await visitor.isVisible('#login-form') && !(await visitor.isVisible('#add-form')),
    'a visitor who has not logged in should see the login form, not the comment box');
  ok('alice (one tab) and bob (two tabs) open the page, logged in; all streams open (hub on another origin); a visitor sees the login form');

  // --- comments appear in every page ------------------------------------
  const t0 = Date.now();
  await comment(a, 'First!');
  await expectView('the first comment everywhere', all, [['First!', 0]]);
  const latency = Date.now() - t0;
  await comment(b1, 'Great article, thanks');
  await comment(b2, 'I disagree with point 3');
  await expectView('three comments, oldest first at 0 likes', [...all, visitor],
    [['First!', 0], ['Great article, thanks', 0], ['I disagree with point 3', 0]]);
  ok(`a comment added in one page appears in every page, the visitor's too (${latency} ms from the click)`);

  // --- likes re-rank every page at once; one like per person -------------
  await click(a, 'I disagree with point 3', 'like');
  await expectView('a like moves it to the top', all,
    [['I disagree with point 3', 1], ['First!', 0], ['Great article, thanks', 0]]);
  await click(b1, 'Great article, thanks', 'like');
  await click(a, 'Great article, thanks', 'like');
  await expectView('two likes move it above', all,
    [['Great article, thanks', 2], ['I disagree with point 3', 1], ['First!', 0]]);
  check(await a.textContent('#comments li:first-child button.like') === 'Liked', 'alice\'s page should say she likes it');
  await click(b2, 'Great article, thanks', 'like');
  const again = await call('POST', `/api/comments/${await idOf('Great article, thanks')}/like`, { cookie: await loginCookie('bob') });
  check(again.status === 200 && again.body.likes === 2, `bob's third like: ${JSON.stringify(again)}`);
  await sleep(300);
  await expectView('bob liking again (other tab, API) changes nothing', all,
    [['Great article, thanks', 2], ['I disagree with point 3', 1], ['First!', 0]]);
  await click(a, 'Great article, thanks', 'unlike');
  await click(a, 'Great article, thanks', 'unlike');
  await sleep(300);
  await expectView('alice takes hers back; a second take-back does not take bob\'s', all,
    [['Great article, thanks', 1], ['I disagree with point 3', 1], ['First!', 0]]);
  ok('like (POST) and take back (DELETE) update the count and the ranking in every page at once; one like per person: liking again changes nothing, taking back twice never takes another person\'s');

  // --- many people at once: none lost -------------------------------------
  const id = await idOf('First!');
  const fans = await Promise.all(Array.from({ length: 40 }, (_, i) => loginCookie(`fan${i}`)));
  const results = await Promise.all(fans.map((cookie) => call('POST', `/api/comments/${id}/like`, { cookie })));
  check(results.every((r) => r.status === 200), `likes answered ${results.map((r) => r.status)}`);
  const fan0 = await Promise.all(Array.from({ length: 10 }, () => call('POST', `/api/comments/${id}/like`, { cookie: fans[0] })));
  check(fan0.every((r) => r.status === 200), `fan0's likes answered ${fan0.map((r) => r.status)}`);
  await expectView('40 people like it at once', all, [['First!', 40], ['Great article, thanks', 1], ['I disagree with point 3', 1]]);
  ok('40 people like one comment at once and one of them 10 more times: Redis counts 40, and every page ends on 40');

  // --- persistence: a reload and a restart of the app (Redis keeps it) ---
  await restartApp();
  await b1.reload();
  await ready(b1);
  await expectView('after the app restarted', [b1], [['First!', 40], ['Great article, thanks', 1], ['I disagree with point 3', 1]]);
  check(await b1.textContent('#comments li:nth-child(2) button.like') === 'Liked', 'bob\'s reloaded page should say he likes it');
  await click(b1, 'Great article, thanks', 'unlike');
  await expectView('the restarted app still pushes', all, [['First!', 40], ['I disagree with point 3', 1], ['Great article, thanks', 0]]);
  const likedIn = (page, text) => page.locator('#comments li', { hasText: text }).locator('button.like').textContent();
  await until('bob\'s other tab follows his take-back', async () => (await likedIn(b2, 'Great article, thanks')) === 'Like');
  ok('comments and likes (and who likes what) survive a restart of the app (they live in Redis); the restarted app pushes to the pages already open; bob\'s other tab follows his "Liked" state');

  // --- Herald down: nothing lost, every page catches up --------------------
  await stopHerald();
  await until('the pages notice', async () => (await a.textContent('#conn')) !== 'open', 10_000);
  await comment(a, 'Written while the hub was down');
  await until('alice\'s comment is stored', async () => (await view(a)).some(([body]) => body === 'Written while the hub was down'));
  check(await a.isHidden('#error'), `commenting with Herald down should not show an error: ${await a.textContent('#error')}`);
  await click(b1, 'I disagree with point 3', 'like');
  await until('bob\'s like is stored', async () => (await view(b1))[0][0] === 'First!' && (await view(b1))[1][1] === 2);
  check(await b1.isHidden('#error'), `liking with Herald down should not show an error: ${await b1.textContent('#error')}`);
  await startHerald();
  const want = [['First!', 40], ['I disagree with point 3', 2], ['Great article, thanks', 0], ['Written while the hub was down', 0]];
  await expectView('every page catches up after the outage, without a reload', [...all, visitor], want, 30_000);
  await sleep(500);
  await expectView('once each', [...all, visitor], want);
  ok('Herald stopped: a comment and a like answer at once and show in their own page; Herald back: every open page (4) shows both, once each, with no reload');

  // --- bad input -----------------------------------------------------------
  await a.bringToFront();
  await a.fill('#body', '   ');
  await a.click('#add');
  await until('the page shows the empty-body error', async () => (await a.textContent('#error')).includes('body must not be empty'));
  await comment(a, 'x'.repeat(501));
  await until('the page shows the too-long error', async () => (await a.textContent('#error')).includes('at most 500'));
  check((await a.inputValue('#body')).length === 501, 'a refused comment stays in the box');
  await a.evaluate(() => window.likeComment('POST', 999999));
  await until('the page shows the unknown-comment error', async () => (await a.textContent('#error')).includes('no comment 999999'));
  await a.screenshot({ path: `${shots}/likes-error.png` });
  const cookie = await loginCookie('alice');
  const errors = [];
  errors.push(await expectError('empty body', 400, 'body must not be empty', 'POST', '/api/comments', { cookie, json: { body: '' } }));
  errors.push(await expectError('no body', 400, 'body must not be empty', 'POST', '/api/comments', { cookie, json: {} }));
  errors.push(await expectError('oversize body', 413, 'at most 500', 'POST', '/api/comments', { cookie, json: { body: 'x'.repeat(2000) } }));
  errors.push(await expectError('oversize request', 413, 'request too large: send at most 16 KiB', 'POST', '/api/comments', { cookie, json: { body: 'x'.repeat(40_000) } }));
  errors.push(await expectError('unknown comment (like)', 404, 'no comment 999999', 'POST', '/api/comments/999999/like', { cookie }));
  errors.push(await expectError('unknown comment (unlike)', 404, 'no comment 999999', 'DELETE', '/api/comments/999999/like', { cookie }));
  errors.push(await expectError('id not a number', 400, 'not a number', 'POST', '/api/comments/abc/like', { cookie }));
  errors.push(await expectError('not JSON', 400, 'invalid JSON', 'POST', '/api/comments', { cookie, raw: '{"body":', contentType: 'application/json' }));
  errors.push(await expectError('no content type', 415, 'Content-Type', 'POST', '/api/comments', { cookie, raw: 'body=hi' }));
  errors.push(await expectError('comment, not logged in', 401, 'log in', 'POST', '/api/comments', { json: { body: 'hi' } }));
  errors.push(await expectError('like, not logged in', 401, 'log in', 'POST', `/api/comments/${id}/like`));
  errors.push(await expectError('forged session', 401, 'log in', 'POST', `/api/comments/${id}/like`, { cookie: 'likes_session=alice.forged' }));
  await expectView('nothing changed', all, want);
  ok(`bad input in the page (empty, too long, unknown comment) shows the server's message; ${errors.length} bad requests get a clear 4xx (400 empty, 413 oversize, 404 unknown comment, 401 not logged in, ...) and change nothing`);

  // --- a comment typed while the previous one is on its way stays ------
  await a.fill('#body', '');
  await a.route('**/api/comments', async (route) => {
    if (route.request().method() === 'POST') await sleep(700);
    await route.continue();
  });
  await comment(a, 'A slow one');
  await a.fill('#body', 'typed while it was sending');
  await until('the slow comment is stored', async () => (await view(a)).some(([body]) => body === 'A slow one'));
  check(await a.inputValue('#body') === 'typed while it was sending',
    `the box lost what was typed meanwhile: ${JSON.stringify(await a.inputValue('#body'))}`);
  await a.unroute('**/api/comments');
  ok('a comment typed while the previous one is still sending stays in the box');

  await b2.bringToFront();
  await b2.screenshot({ path: `${shots}/likes.png` });
});
