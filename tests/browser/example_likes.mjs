// Live likes and comments (examples/likes, scenario 2) as people use it:
// alice and bob with the page open (bob in two tabs), comments added and
// liked through the page's buttons, every page re-ranked at once. Started
// by tests/example_likes.rs (with a redis-server of its own). Prints
// `ok - ...` per check.
import { app, hub, shots, check, sleep, until, person, openTab, ready, call, expectError, restartApp, main, ok } from './apps_common.mjs';

/** What a tab shows: the comments in order, [body, likes]. */
function view(page) {
  return page.evaluate(() => [...document.querySelectorAll('#comments li')].map((li) => [
    li.querySelector('.body').textContent, Number(li.querySelector('.likes').textContent.split(' ')[0]),
  ]));
}

async function expectView(what, pages, want) {
  for (const [n, page] of pages.entries()) {
    try {
      await until(`${what} (tab ${n})`, async () => JSON.stringify(await view(page)) === JSON.stringify(want));
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

const idOf = async (text) => (await call('GET', '/api/comments')).body.comments.find((c) => c.body === text).id;

await main('likes', async (browser) => {
  const alice = await person(browser);
  const bob = await person(browser);
  const a = await ready(await openTab(alice));
  const b1 = await ready(await openTab(bob));
  const b2 = await ready(await openTab(bob));
  const all = [a, b1, b2];
  check(new URL(app).origin !== new URL(hub).origin, 'the app and the hub should be on different origins');
  await expectView('an empty list', all, []);
  ok('alice (one tab) and bob (two tabs) open the page; all streams open (hub on another origin); no comments yet');

  // --- comments appear in every page ------------------------------------
  const t0 = Date.now();
  await comment(a, 'First!');
  await expectView('the first comment everywhere', all, [['First!', 0]]);
  const latency = Date.now() - t0;
  await comment(b1, 'Great article, thanks');
  await comment(b2, 'I disagree with point 3');
  await expectView('three comments, oldest first at 0 likes', all,
    [['First!', 0], ['Great article, thanks', 0], ['I disagree with point 3', 0]]);
  ok(`a comment added in one page appears in every page (${latency} ms from the click)`);

  // --- likes re-rank every page at once ----------------------------------
  await click(a, 'I disagree with point 3', 'like');
  await expectView('a like moves it to the top', all,
    [['I disagree with point 3', 1], ['First!', 0], ['Great article, thanks', 0]]);
  await click(b1, 'Great article, thanks', 'like');
  await click(b2, 'Great article, thanks', 'like');
  await expectView('two likes move it above', all,
    [['Great article, thanks', 2], ['I disagree with point 3', 1], ['First!', 0]]);
  await click(a, 'Great article, thanks', 'unlike');
  await click(a, 'Great article, thanks', 'unlike');
  await expectView('two unlikes (DELETE) move it back', all,
    [['I disagree with point 3', 1], ['First!', 0], ['Great article, thanks', 0]]);
  await click(a, 'Great article, thanks', 'unlike');
  await sleep(300);
  await expectView('never below 0', all, [['I disagree with point 3', 1], ['First!', 0], ['Great article, thanks', 0]]);
  ok('like (POST) and unlike (DELETE) from any page update the count and the ranking in every page at once; never below 0');

  // --- many likes at once: none lost, pages end on the final count -----
  const id = await idOf('First!');
  const results = await Promise.all(Array.from({ length: 40 }, () => call('POST', `/api/comments/${id}/like`)));
  check(results.every((r) => r.status === 200), `likes answered ${results.map((r) => r.status)}`);
  await expectView('40 concurrent likes', all, [['First!', 40], ['I disagree with point 3', 1], ['Great article, thanks', 0]]);
  ok('40 concurrent likes: Redis counts all 40 and every page ends on 40 (older counts published late are ignored by version)');

  // --- persistence: a reload and a restart of the app (Redis keeps it) ---
  await restartApp();
  await b1.reload();
  await ready(b1);
  await expectView('after the app restarted', [b1], [['First!', 40], ['I disagree with point 3', 1], ['Great article, thanks', 0]]);
  await click(b1, 'I disagree with point 3', 'unlike');
  await expectView('the restarted app still pushes', all, [['First!', 40], ['Great article, thanks', 0], ['I disagree with point 3', 0]]);
  ok('comments and likes survive a restart of the app (they live in Redis); the restarted app pushes to the pages already open');

  // --- bad input -----------------------------------------------------------
  await a.bringToFront();
  await a.fill('#body', '   ');
  await a.click('#add');
  await until('the page shows the empty-body error', async () => (await a.textContent('#error')).includes('body must not be empty'));
  await comment(a, 'x'.repeat(501));
  await until('the page shows the too-long error', async () => (await a.textContent('#error')).includes('at most 500'));
  await a.evaluate(() => window.likeComment('POST', 999999));
  await until('the page shows the unknown-comment error', async () => (await a.textContent('#error')).includes('no comment 999999'));
  await a.screenshot({ path: `${shots}/likes-error.png` });
  const errors = [];
  errors.push(await expectError('empty body', 400, 'body must not be empty', 'POST', '/api/comments', { json: { body: '' } }));
  errors.push(await expectError('no body', 400, 'body must not be empty', 'POST', '/api/comments', { json: {} }));
  errors.push(await expectError('oversize body', 413, 'at most 500', 'POST', '/api/comments', { json: { body: 'x'.repeat(2000) } }));
  errors.push(await expectError('oversize request', 413, 'request too large: send at most 16 KiB', 'POST', '/api/comments', { json: { body: 'x'.repeat(40_000) } }));
  errors.push(await expectError('unknown comment (like)', 404, 'no comment 999999', 'POST', '/api/comments/999999/like'));
  errors.push(await expectError('unknown comment (unlike)', 404, 'no comment 999999', 'DELETE', '/api/comments/999999/like'));
  errors.push(await expectError('id not a number', 400, 'not a number', 'POST', '/api/comments/abc/like'));
  errors.push(await expectError('not JSON', 400, 'invalid JSON', 'POST', '/api/comments', { raw: '{"body":', contentType: 'application/json' }));
  errors.push(await expectError('no content type', 415, 'Content-Type', 'POST', '/api/comments', { raw: 'body=hi' }));
  await expectView('nothing changed', all, [['First!', 40], ['Great article, thanks', 0], ['I disagree with point 3', 0]]);
  ok(`bad input in the page (empty, too long, unknown comment) shows the server's message; ${errors.length} bad requests get a clear 4xx (400 empty, 413 oversize, 404 unknown comment, ...) and change nothing`);

  await b2.bringToFront();
  await b2.screenshot({ path: `${shots}/likes.png` });
});
