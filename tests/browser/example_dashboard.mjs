// The live dashboard (examples/dashboard) as people watch it: two people
// with the page open, values moving every second, a tab kept busy that
// catches up in one frame, Herald stopped and started (the pages fill the
// gap), the app restarted (the pages follow its new run). Started by
// tests/example_dashboard.rs. Prints `ok - ...` per check.
import {
  app, hub, shots, check, sleep, until, person, openTab, ready, call, expectError, main, ok,
  stopHerald, startHerald, restartApp,
} from './apps_common.mjs';

/** What a tab shows: the values in the headers and the page's state. */
async function view(page) {
  return page.evaluate(() => {
    const d = window.dashboard();
    return {
      seq: Number(document.body.dataset.seq || 0),
      cpu: document.getElementById('cpu').textContent,
      mem: document.getElementById('mem').textContent,
      net: document.getElementById('net').textContent,
      price: document.getElementById('price').textContent,
      log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
      logNumbers: [...document.querySelectorAll('#log li')].map((li) => Number(li.dataset.n)),
      samples: d.samples,
      frames: d.frames,
      received: d.received,
      keep: d.keep,
    };
  });
}

/** Coloured pixels drawn on a canvas. */
function inked(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  }, id);
}

/** Both tabs at the same sample: their views, compared. */
async function agree(what, a, b) {
  let va, vb;
  await until(what, async () => {
    [va, vb] = [await view(a), await view(b)];
    return va.seq > 0 && va.seq === vb.seq;
  }, 5_000);
  for (const k of ['cpu', 'mem', 'net', 'price']) {
    check(va[k] === vb[k], `${what}: ${k} is ${JSON.stringify(va[k])} in one tab, ${JSON.stringify(vb[k])} in the other`);
  }
  const tail = (v) => JSON.stringify(v.samples.slice(-5));
  check(tail(va) === tail(vb), `${what}: the last samples differ: ${tail(va)} vs ${tail(vb)}`);
  return [va, vb];
}

await main('dashboard', async (browser) => {
  const alice = await person(browser);
  const bob = await person(browser);

  // --- the page opens, on its stream --------------------------------------
  const a = await ready(await openTab(alice));
  const b = await ready(await openTab(bob));
  check(new URL(app).origin !== new URL(hub).origin, 'the app and the hub should be on different origins');
  const v0 = await view(a);
  ok(`two people open the dashboard; both streams open (hub on another origin), at sample ${v0.seq}`);

  // --- values move every second ---------------------------------------------
  await until('three more samples', async () => (await view(a)).seq >= v0.seq + 3, 8_000);
  const v1 = await view(a);
  check(/^\d+\.\d %$/.test(v1.cpu), `cpu shows ${JSON.stringify(v1.cpu)}`);
  check(/^\d+ MiB \/ \d+ MiB$/.test(v1.mem), `memory shows ${JSON.stringify(v1.mem)}`);
  check(/^↓ .+\/s ↑ .+\/s$/.test(v1.net), `network shows ${JSON.stringify(v1.net)}`);
  check(/^\d+\.\d\d$/.test(v1.price), `price shows ${JSON.stringify(v1.price)}`);
  const prices = new Set(v1.samples.map((s) => s.price));
  check(prices.size >= 2, `the price did not move over ${v1.samples.length} samples`);
  const seqs = v1.samples.map((s) => s.seq);
  check(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `samples not consecutive: ${seqs}`);
  const times = v1.samples.slice(-4).map((s) => s.t);
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  check(gaps.every((g) => g > 300 && g < 2500), `samples are not a second apart: ${gaps}`);
  for (const id of ['cpu-chart', 'mem-chart', 'net-chart', 'price-chart']) {
    const n = await inked(a, id);
    check(n > 200, `${id} has ${n} pixels drawn`);
  }
  ok(`values change every second (samples ${v0.seq} to ${v1.seq}, ${prices.size} prices, gaps ${gaps.join('/')} ms); cpu ${v1.cpu}, memory ${v1.mem}, network ${v1.net}; four charts drawn`);

  // --- two tabs agree ---------------------------------------------------------
  await agree('alice and bob at the same sample', a, b);
  await sleep(2_100);
  const [va] = await agree('alice and bob two seconds later', a, b);
  ok(`two tabs (two people) show the same values and samples at the same second (sample ${va.seq}: ${va.cpu}, ${va.price})`);

  // --- the log tail --------------------------------------------------------------
  check(va.log.some((l) => l.includes('dashboard started')), `the log tail lacks the start line: ${JSON.stringify(va.log)}`);
  const served = (v) => v.log.filter((l) => l.includes('page served')).length;
  const [sa, sb] = [served(await view(a)), served(await view(b))];
  const c = await ready(await openTab(alice)); // the app logs it; every page shows it
  await until('the new log line in both tabs', async () => served(await view(a)) === sa + 1 && served(await view(b)) === sb + 1, 4_000);
  await until('a sample line in the log', async () => (await view(a)).log.some((l) => /sample \d+: cpu/.test(l)), 12_000);
  const [la, lb] = [(await view(a)).log, (await view(b)).log];
  check(JSON.stringify(la.slice(-3)) === JSON.stringify(lb.slice(-3)), `log tails differ: ${JSON.stringify(la.slice(-3))} vs ${JSON.stringify(lb.slice(-3))}`);
  const numbers = (await view(b)).logNumbers;
  check(numbers.every((n, i) => i === 0 || n === numbers[i - 1] + 1), `the log tail repeats or skips lines: ${numbers}`);
  await c.close();
  ok(`the app's own log, line by line in every page: a new tab's "page served" appears in both within a second; no line twice (${la.length} lines)`);

  // --- a slow tab does not fall behind ---------------------------------------
  const before = await view(b);
  // Bob's tab is busy for 4.5 s (its main thread blocked): updates queue up.
  await b.evaluate(() => { const end = Date.now() + 4_500; while (Date.now() < end); });
  const [, caught] = await agree('bob\'s tab caught up with alice\'s', a, b);
  const drawn = caught.frames - before.frames;
  const got = caught.received - before.received;
  check(got >= 3, `only ${got} updates arrived during the busy time`);
  check(drawn <= got - 2, `${drawn} frames drawn for ${got} updates`);
  const s = caught.samples.map((x) => x.seq);
  check(s.every((x, i) => i === 0 || x === s[i - 1] + 1), `bob's samples not consecutive: ${s}`);
  check(caught.samples.length <= caught.keep, `${caught.samples.length} samples kept, more than ${caught.keep}`);
  check(caught.frames <= caught.received + 2, `${caught.frames} frames for ${caught.received} updates`);
  ok(`a tab blocked 4.5 s catches up at once: ${got} updates, ${drawn} frame(s) drawn, no sample missing; at most ${caught.keep} points kept, never more frames than updates`);

  await a.bringToFront();
  await a.screenshot({ path: `${shots}/dashboard.png` });

  // --- Herald down for a while: the pages fill the gap when it is back -----
  const beforeOutage = (await view(a)).seq;
  await stopHerald();
  await until('the pages notice', async () => (await a.textContent('#conn')) !== 'open', 10_000);
  await sleep(3_000);
  await startHerald();
  for (const [who, page] of [['alice', a], ['bob', b]]) {
    await until(`${who}'s page is live again`, async () => (await view(page)).seq >= beforeOutage + 6, 30_000);
    const seqs = (await view(page)).samples.map((x) => x.seq).filter((x) => x >= beforeOutage);
    check(seqs.every((x, i) => i === 0 || x === seqs[i - 1] + 1), `${who}'s samples across the outage: ${seqs}`);
  }
  await agree('alice and bob after the outage', a, b);
  ok(`Herald stopped for 3 s and started again: both pages fill the gap from the app (samples ${beforeOutage} on, none missing, none twice), no reload`);

  // --- the app restarts: the pages follow its new run --------------------
  await restartApp();
  for (const [who, page] of [['alice', a], ['bob', b]]) {
    await until(`${who}'s page shows the new run`, async () => {
      const v = await view(page);
      return v.samples.length >= 2 && v.samples[0].seq <= 2 && v.seq >= 3;
    }, 30_000);
    const v = await view(page);
    const seqs = v.samples.map((x) => x.seq);
    check(seqs.every((x, i) => i === 0 || x === seqs[i - 1] + 1), `${who}'s samples after the restart: ${seqs}`);
    check(v.logNumbers[0] === 1 && v.log[0].includes('dashboard started'), `${who}'s log after the restart: ${JSON.stringify(v.log.slice(0, 2))}`);
  }
  ok('the app restarted (its numbers start again at 1): both open pages drop the old run and draw the new one within seconds, no reload');

  // --- bad requests --------------------------------------------------------------
  await expectError('unknown API', 404, 'no such page', 'GET', '/api/nothing');
  const h = await call('GET', '/api/history');
  check(h.status === 200 && h.body.samples.length > 0 && h.body.topic === 'https://example.app/dashboard', `history: ${h.status}`);
  ok('GET /api/history gives the samples kept and the topic; an unknown path is a JSON 404');
});
