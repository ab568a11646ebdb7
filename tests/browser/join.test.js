// Real-browser tests of the listener page's join flow (POST /api/spaces/{id}/join): tickets,
// the proof-of-work challenge solved in a Web Worker, the waiting line, refusals with honest
// messages and jittered retries, the pre-queue of a scheduled space, and the lobby's access
// selector. The real `levee` binary on loopback ports, headless chromium with a fake
// microphone publishing through the host page. Every wait is bounded.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test
//
// Two servers: one with default settings, and one whose line admits 0.5 callers per second with
// no burst (`--admission-rate 0.5 --admission-burst 0`), so that every caller queues.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import {
  WAIT_MS, api, createSpace, launchBrowser, numbers, serverNote, shot, startServer, waitFor,
} from './helpers.js';

/** Records the URL of every WebSocket the page opens (window.testSockets). */
function recordSockets() {
  const Native = window.WebSocket;
  window.testSockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.testSockets.push(this);
    }
  };
}

/** The `ticket` query parameter of a URL, or null. */
const ticketOf = (url) => new URL(url).searchParams.get('ticket');

describe('joining through the join API in headless chromium', () => {
  let server = null;      // default settings
  let slow = null;        // a line that admits 0.5 callers per second, no burst
  let browser = null;
  const hosts = [];

  const openPage = (url, init, setup) => browser.openPage(url, init, setup);

  /** Creates a space with `extra` settings on `srv` and puts a live host page on it. */
  async function liveSpace(srv, title, extra) {
    const space = await createSpace(srv.base, title, extra);
    const host = await openPage(`${srv.base}/space/${space.id}/host#key=${encodeURIComponent(space.host_key)}`);
    hosts.push(host);
    await host.click('#go-live');
    await waitFor(host, 'leveeHost', (h) => h.state === 'live' && h.packetsSent > 10,
      `the host page of "${title}" to be live`);
    return { space, host };
  }

  /** Opens the space page and presses Play. */
  async function listen(srv, space, init, setup) {
    const page = await openPage(`${srv.base}/space/${space.id}`, init, setup);
    await page.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await page.click('#play');
    return page;
  }

  before(async () => {
    [server, slow] = await Promise.all([
      startServer(),
      startServer(['--admission-rate', '0.5', '--admission-burst', '0']),
    ]);
    browser = await launchBrowser([server.base, slow.base]);
  });

  after(async () => {
    for (const h of hosts) await h.close().catch(() => {});
    if (browser) await browser.close();
    for (const s of [server, slow]) {
      if (!s) continue;
      if (s.exited) console.error(`levee exited during the tests:${serverNote()}`);
      s.stop();
    }
  });

  describe('a ticketed space', () => {
    let space = null;

    before(async () => {
      ({ space } = await liveSpace(server, 'Join test: ticketed', { access: 'ticketed' }));
    });

    test('its streams refuse listeners without a ticket', async () => {
      const info = await api(server.base, 'GET', `/api/spaces/${space.id}`);
      assert.equal(info.json.access, 'ticketed', info.text);
      assert.match(info.json.urls.join, new RegExp(`/api/spaces/${space.id}/join$`));
      const res = await fetch(`${server.base}/live/${space.id}.ogg`);
      const body = await res.text();
      assert.equal(res.status, 403, `GET /live/${space.id}.ogg without a ticket: ${res.status} ${body}`);
    });

    test('the listener page joins with a ticket and decodes the audio', async (t) => {
      const page = await listen(server, space, recordSockets);
      const s = await waitFor(page, 'levee',
        (x) => x.joinState === 'admitted' && x.state === 'playing' && x.framesDecoded > 50,
        'the page to be admitted and decode more than 50 frames');
      assert.equal(s.mode, 'websocket');
      assert.equal(s.access, 'ticketed');
      assert.equal(s.admissions, 1, JSON.stringify(s));
      assert.equal(s.queuePosition, null);
      assert.ok(s.gaps <= 2, JSON.stringify(s));
      const urls = await page.evaluate(() => window.testSockets.map((w) => w.url));
      assert.equal(urls.length, 1, `one socket: ${urls}`);
      assert.ok(ticketOf(urls[0]), `the socket URL carries a ticket: ${urls[0]}`);
      assert.equal(await page.locator('#line-box').isHidden(), true, 'no line box once admitted');
      assert.equal(await page.locator('#space-access').textContent(), 'ticketed');
      // The Ogg link carries the ticket too, and says it does.
      assert.ok(ticketOf(await page.getAttribute('#ogg-link', 'href')), 'the Ogg link carries a ticket');
      assert.equal(await page.locator('#ogg-ticket-note').isVisible(), true);

      // A dropped socket joins again: a fresh ticket (they live about a minute), then audio.
      await page.evaluate(() => window.testSockets.at(-1).close(4000, 'test drops the socket'));
      const r = await waitFor(page, 'levee',
        (x) => x.reconnects >= 1 && x.admissions >= 2 && x.state === 'playing' &&
          x.framesDecoded > s.framesDecoded + 25,
        'the page to join again after the drop and play');
      const after2 = await page.evaluate(() => window.testSockets.map((w) => w.url));
      assert.equal(after2.length, 2, `one new socket: ${after2}`);
      assert.notEqual(ticketOf(after2[1]), ticketOf(after2[0]), 'the reconnect used a fresh ticket');
      t.diagnostic(`listener: ${JSON.stringify(r)}`);
      assert.deepEqual(page.leveeErrors, [], 'no errors on the space page');
      await page.close();
    });

    test('without WebCodecs the page plays the ticketed Ogg stream', async () => {
      const page = await listen(server, space, () => { delete window.AudioDecoder; });
      const s = await waitFor(page, 'levee',
        (x) => x.mode === 'ogg' && x.joinState === 'admitted' && x.playbackClock > 0.5,
        'the <audio> fallback to join and play more than 0.5 s');
      assert.equal(s.state, 'playing', JSON.stringify(s));
      const src = await page.evaluate(() => document.getElementById('fallback-audio').src);
      assert.ok(ticketOf(src), `the <audio> source carries a ticket: ${src}`);
      await page.close();
    });

    test('a refusal is shown with its countdown, and the page retries by itself', async () => {
      let refused = 0;
      // The first join meets a "too many requests" answer; the next ones reach the server.
      const page = await listen(server, space, undefined, (p) => p.route('**/api/spaces/*/join', (route) => {
        if (refused >= 1) return route.continue();
        refused += 1;
        return route.fulfill({
          status: 429,
          headers: { 'Content-Type': 'application/json', 'Retry-After': '2' },
          body: JSON.stringify({
            error: 'too many join requests from this network: slow down', retry_after_ms: 1500,
          }),
        });
      }));
      const s = await waitFor(page, 'levee', (x) => x.joinState === 'limited' && x.retryInMs > 0,
        'the page to show the refusal', 5000);
      const text = (await page.locator('#line-box').textContent()).replace(/\s+/g, ' ');
      assert.match(text, /Too many join requests/, text);
      assert.match(text, /Trying again in \d+ s/, text);
      assert.match(await page.locator('#status').textContent(), /tries again by itself/);
      await shot(page, 'refused.png');
      assert.ok(s.retryInMs <= 1500 * 1.2 + 50, `waits about what the server said: ${s.retryInMs} ms`);
      const a = await waitFor(page, 'levee',
        (x) => x.joinState === 'admitted' && x.state === 'playing' && x.framesDecoded > 10,
        'the page to retry, be admitted and play', 15000);
      assert.equal(refused, 1);
      assert.ok(a.joins >= 2, `two join requests at least: ${JSON.stringify(a)}`);
      assert.deepEqual(page.leveeErrors, []);
      await page.close();
    });
  });

  describe('a challenge space', () => {
    let space = null;

    before(async () => {
      ({ space } = await liveSpace(server, 'Join test: challenge', { access: 'challenge' }));
    });

    test('the page solves the proof of work in a worker, then plays', async (t) => {
      const join = await api(server.base, 'POST', `/api/spaces/${space.id}/join`, {});
      assert.equal(join.status, 401, `a join without work is asked to solve: ${join.text}`);
      assert.ok(join.json.challenge && join.json.challenge.difficulty >= 12, join.text);

      const page = await listen(server, space, () => {
        // Count the workers the page starts.
        const Native = window.Worker;
        window.testWorkers = [];
        window.Worker = class extends Native {
          constructor(url, ...rest) {
            super(url, ...rest);
            window.testWorkers.push(String(url));
          }
        };
      });
      const s = await waitFor(page, 'levee',
        (x) => x.joinState === 'admitted' && x.state === 'playing' && x.framesDecoded > 50,
        'the page to pass the challenge and decode more than 50 frames');
      t.diagnostic(`pow: difficulty ${s.powDifficulty}, ${s.powHashes} hashes in ${s.powMs} ms ` +
        `(${s.powEngine}, ${s.powWorkers} workers)`);
      assert.ok(s.powDifficulty >= 12, `difficulty ${s.powDifficulty}`);
      assert.ok(Number.isFinite(s.powMs) && s.powMs >= 0, `powMs recorded: ${s.powMs}`);
      assert.ok(s.powHashes >= 1, `hashes tried: ${s.powHashes}`);
      assert.equal(s.powEngine, 'SubtleCrypto');
      assert.equal(s.access, 'challenge');
      const workers = await page.evaluate(() => window.testWorkers);
      assert.ok(workers.length >= 1 && workers.length === s.powWorkers,
        `the page says how many workers searched: ${s.powWorkers}, started ${workers.length}`);
      for (const u of workers) assert.equal(new URL(u, 'http://x').pathname, '/assets/pow-worker.js');
      assert.match(await page.locator('#stat-pow').textContent(), /^\d+$/);
      assert.ok(page.leveeJoinAnswers.some((x) => /\b401\b/.test(x)), 'the server asked for work (401)');
      assert.deepEqual(page.leveeErrors, [], 'no errors on the space page');
      await page.close();
    });

    test('a hard challenge shows "Checking your browser" with progress, and Stop ends the work', async () => {
      // A challenge far harder than the server asks (about 4 million hashes): the page keeps
      // working long enough to be looked at. The seed is not the server's; it is never sent.
      const page = await listen(server, space, undefined, (p) => p.route('**/api/spaces/*/join', (route) => route.fulfill({
        status: 401,
        headers: { 'Content-Type': 'application/json', 'WWW-Authenticate': 'PoW difficulty=22' },
        body: JSON.stringify({
          error: 'solve this challenge to join',
          challenge: { seed: 'browser-test-seed', difficulty: 22, algorithm: 'sha256', expires_in_s: 120 },
        }),
      })));
      await waitFor(page, 'levee', (x) => x.joinState === 'challenge' && x.powDifficulty === 22,
        'the page to take the challenge', 5000);
      const hint = page.locator('#line-hint');
      await hint.filter({ hasText: /[\d,.]+ hashes tried/ }).waitFor({ timeout: 5000 });
      const tried = async () => Number((await hint.textContent()).match(/^([\d,.\s]+) hashes/)[1].replace(/\D/g, ''));
      const t1 = await tried();
      // The page stays responsive while the worker hashes: the status line is readable at once.
      const t0 = Date.now();
      assert.match(await page.locator('#line-text').textContent(), /^Checking your browser… \(difficulty 22\)$/);
      assert.ok(Date.now() - t0 < 1000, 'the main thread is not blocked');
      await delay(600);
      const t2 = await tried();
      assert.ok(t2 > t1, `the progress moves: ${t1} then ${t2} hashes`);
      assert.ok(await page.locator('#line-progress').isVisible(), 'a progress bar is shown');
      await shot(page, 'challenge.png');
      await page.click('#play'); // Stop
      const s = await waitFor(page, 'levee', (x) => x.joinState === 'idle' && x.state === 'idle',
        'Stop to end the challenge', 3000);
      assert.equal(await page.locator('#line-box').isHidden(), true);
      assert.equal(s.powMs, null, 'the unsolved challenge recorded no time');
      assert.deepEqual(page.leveeErrors, []);
      await page.close();
    });
  });

  test('waiting room: the page shows its place in line, counts down and joins by itself', async (t) => {
    const { space } = await liveSpace(slow, 'Join test: waiting room');
    const path = `/api/spaces/${space.id}/join`;
    // Fill the line from node first: with no burst, each of these callers queues.
    const first = [];
    for (let i = 0; i < 3; i += 1) {
      const r = await api(slow.base, 'POST', path, {});
      assert.equal(r.status, 202, `join ${i} from node queues: ${r.status} ${r.text}`);
      assert.ok(r.headers.get('retry-after'), 'a 202 carries Retry-After');
      first.push(r.json.queue);
    }
    const info = await api(slow.base, 'GET', `/api/spaces/${space.id}`);
    assert.ok(info.json.queue_waiting >= 2, `the space shows its line: ${info.text}`);
    // These callers come back as clients should (keeping the measured outflow honest).
    const abort = new AbortController();
    const callers = first.map(async (q) => {
      let queue = q;
      try {
        for (;;) {
          await delay(queue.retry_after_ms, undefined, { signal: abort.signal });
          const r = await api(slow.base, 'POST', path, { queue_token: queue.token });
          if (r.status !== 202) return r.status;
          queue = r.json.queue;
        }
      } catch (e) {
        if (e.name === 'AbortError') return 'stopped';
        throw e;
      }
    });

    try {
      const page = await listen(slow, space);
      const q = await waitFor(page, 'levee', (x) => x.joinState === 'queued' && x.queuePosition >= 1,
        'the page to be in line', 5000);
      t.diagnostic(`queued: ${JSON.stringify({ position: q.queuePosition, eta: q.queueEtaMs })}, ` +
        `page ${await page.evaluate(() => document.visibilityState)}`);
      const text = await page.locator('#line-text').textContent();
      assert.match(text, /^You are number [\d,.\s]+ — (about \d+ (s|min)|any moment now)/, text);
      assert.match(text, /number/);
      assert.ok(q.queuePosition >= 2, `callers from node are ahead: number ${q.queuePosition}`);
      assert.ok(q.queueEtaMs > 0 && q.queueEtaMs < 60000, `a plausible ETA: ${q.queueEtaMs} ms`);
      assert.match(await page.locator('#status').textContent(), /line/);
      await shot(page, 'queue.png');
      // The countdown runs between answers (watched across two seconds with no recheck in them).
      let counted = null;
      for (let i = 0; i < 4 && counted === null; i += 1) {
        const j1 = (await numbers(page, 'levee')).joins;
        const eta1 = await page.locator('#line-text').textContent();
        // Over 2 s: a page chromium counts as hidden gets its timers only once a second.
        await delay(2100);
        const now = await numbers(page, 'levee');
        const eta2 = await page.locator('#line-text').textContent();
        if (now.joinState !== 'queued') break; // admitted already: nothing left to count
        if (now.joins !== j1 || /any moment/.test(eta1)) continue; // a fresh answer came in
        counted = [eta1, eta2];
      }
      if (counted) assert.notEqual(counted[1], counted[0], 'the ETA counts down between answers');

      const s = await waitFor(page, 'levee',
        (x) => x.joinState === 'admitted' && x.state === 'playing' && x.framesDecoded > 25,
        'the page to be admitted from the line and play', 20000);
      t.diagnostic(`admitted after ${s.queuedMs} ms in line, ${s.joins} join requests`);
      assert.ok(s.joins >= 2, `the page asked again with its token: ${s.joins} joins`);
      assert.ok(s.queuedMs > 500, `time in line recorded: ${s.queuedMs} ms`);
      assert.equal(await page.locator('#line-box').isHidden(), true);
      assert.deepEqual(page.leveeErrors, [], 'no errors on the space page');
      await page.close();
    } finally {
      abort.abort();
      await Promise.allSettled(callers);
    }
  });

  test('pre-queue: before a scheduled start the page waits in line and joins at the start', async () => {
    const startS = Math.ceil(Date.now() / 1000) + 4;
    const space = await createSpace(server.base, 'Join test: pre-queue', { scheduled_start: startS });
    const page = await listen(server, space);
    const q = await waitFor(page, 'levee', (x) => x.joinState === 'queued', 'the page to be in the pre-queue', 5000);
    const toStart = startS * 1000 - Date.now();
    assert.ok(q.queueEtaMs >= toStart - 1500, `the ETA (${q.queueEtaMs} ms) counts the time to the start (${toStart} ms)`);
    assert.match(await page.locator('#line-hint').textContent(), /drawn by lot/);
    const s = await waitFor(page, 'levee', (x) => x.joinState === 'admitted', 'admission at the start', 12000);
    assert.ok(Date.now() >= startS * 1000 - 100, 'not admitted before the start');
    assert.ok(s.queuedMs > 0);
    await page.close();
  });

  test('the lobby creates a challenge space with a scheduled start through its form', async () => {
    const page = await openPage(`${server.base}/`);
    await page.fill('#create-title', 'Lobby challenge');
    await page.selectOption('#create-access', 'challenge');
    // An hour ahead, as datetime-local text (local time, minutes).
    const d = new Date(Date.now() + 3600e3);
    const pad = (n) => String(n).padStart(2, '0');
    const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
    await page.fill('#create-start', local);
    await page.click('#create-submit');
    await page.locator('#created').waitFor({ state: 'visible', timeout: WAIT_MS });
    const m = /^\/space\/([^/#]+)$/.exec(await page.getAttribute('#created-page', 'href'));
    assert.ok(m, 'a link to the space page');
    const got = await api(server.base, 'GET', `/api/spaces/${m[1]}`);
    assert.equal(got.status, 200, got.text);
    assert.equal(got.json.access, 'challenge', got.text);
    assert.equal(got.json.scheduled_start, Math.floor(new Date(local).getTime() / 1000),
      `the start is the local time entered (${local}): ${got.text}`);
    assert.equal(await page.locator('#created-access').getAttribute('data-access'), 'challenge');
    assert.equal(await page.inputValue('#create-access'), 'open', 'the form resets to open');
    const item = page.locator(`#spaces li[data-space-id="${m[1]}"]`);
    await item.waitFor({ timeout: WAIT_MS });
    assert.match(await item.textContent(), /checks browsers/);
    assert.match(await item.textContent(), /starts/);

    // A start in the past is refused by the form itself.
    await page.fill('#create-title', 'Too late');
    await page.fill('#create-start', '2001-01-01T10:00');
    await page.click('#create-submit');
    await page.locator('#create-error').filter({ hasText: /past/ }).waitFor({ timeout: 5000 });
    await shot(page, 'lobby-access.png');

    // Its page: the browser check, then the pre-queue (an hour to the start).
    const listener = await openPage(`${server.base}/space/${m[1]}`);
    await listener.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await listener.click('#play');
    const s = await waitFor(listener, 'levee', (x) => x.joinState === 'queued',
      'the page to pass the challenge into the pre-queue', 10000);
    assert.ok(s.powDifficulty >= 12 && Number.isFinite(s.powMs), JSON.stringify(s));
    assert.ok(s.queueEtaMs > 3000e3, `the ETA counts the hour to the start: ${s.queueEtaMs} ms`);
    assert.match(await listener.locator('#line-text').textContent(), /about (59 min|1 h)/);
    await shot(listener, 'prequeue.png');
    await listener.click('#play'); // Stop
    assert.deepEqual(listener.leveeErrors, []);
    assert.deepEqual(page.leveeErrors, []);
    await listener.close();
    await page.close();
  });
});
