// Real-browser tests of levee's web pages: the real `levee` binary on a loopback port, headless
// Debian chromium (driven by playwright-core) with a fake microphone. Every wait is bounded and
// polls the numbers the pages expose (window.levee, window.leveeHost).
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test
//
// Environment: LEVEE_BIN (default <repo>/target/debug/levee), CHROMIUM (default
// /usr/bin/chromium), LEVEE_SCREENSHOTS=<dir> to save screenshots of the pages. Helpers (the
// server, the browser, bounded waits) are in helpers.js; the join API's page flows in
// join.test.js.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT_MS, api, createSpace, launchBrowser, numbers, serverNote, shot, startServer, waitFor,
} from './helpers.js';

// ------------------------------------------------------------------ the tests

describe('levee web pages in headless chromium', () => {
  let server = null;
  let browser = null;
  let base = '';

  const openPage = (url, init) => browser.openPage(url, init);

  before(async () => {
    server = await startServer();
    base = server.base;
    browser = await launchBrowser([base]);
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) {
      if (server.exited) console.error(`levee exited during the tests:${serverNote()}`);
      server.stop();
    }
  });

  test('the lobby lists a space created through the API', async () => {
    const space = await createSpace(base, 'Lobby listing check');
    const page = await openPage(`${base}/`);
    const item = page.locator(`#spaces li[data-space-id="${space.id}"]`);
    await item.waitFor({ timeout: WAIT_MS });
    const text = await item.textContent();
    assert.match(text, /Lobby listing check/);
    assert.match(text, /scheduled/);
    assert.match(text, /0 listening/);
    assert.equal(await item.locator('a').getAttribute('href'), `/space/${space.id}`);
    await page.close();
  });

  test('the lobby form creates a space and links to its host page with the key in the fragment', async () => {
    const page = await openPage(`${base}/`);
    await page.fill('#create-title', 'Made in the lobby');
    await page.click('#create-submit');
    await page.locator('#created').waitFor({ state: 'visible', timeout: WAIT_MS });
    const key = await page.inputValue('#created-key');
    const hostHref = await page.getAttribute('#created-host', 'href');
    const pageHref = await page.getAttribute('#created-page', 'href');
    assert.match(key, /\S{8,}/, 'a host key is shown');
    const m = /^\/space\/([^/#]+)\/host#key=(.+)$/.exec(hostHref);
    assert.ok(m, `host link ${hostHref} has the form /space/{id}/host#key=...`);
    assert.equal(decodeURIComponent(m[2]), key);
    assert.equal(pageHref, `/space/${m[1]}`);
    const got = await api(base, 'GET', `/api/spaces/${m[1]}`);
    assert.equal(got.status, 200);
    assert.equal(got.json.title, 'Made in the lobby');
    // The list refreshes by itself and shows the new space.
    await page.locator(`#spaces li[data-space-id="${m[1]}"]`).waitFor({ timeout: WAIT_MS });
    await shot(page, 'lobby.png');
    await page.close();
  });

  describe('a browser host publishes and browser listeners hear it live', () => {
    let space = null;
    let host = null;
    let listener = null;

    before(async () => {
      space = await createSpace(base, 'Browser test: fake microphone');
    });

    after(async () => {
      for (const p of [listener, host]) if (p) await p.close().catch(() => {});
    });

    test('the host page goes live from the fake microphone', async () => {
      host = await openPage(`${base}/space/${space.id}/host#key=${encodeURIComponent(space.host_key)}`);
      assert.equal(await host.inputValue('#host-key'), space.host_key, 'the key is read from #key=');
      await host.click('#go-live');
      const n = await waitFor(host, 'leveeHost', (h) => h.state === 'live' && h.packetsSent > 25,
        'the host to be live with more than 25 packets sent');
      assert.ok(n.capture, 'a capture path was chosen');
      // The fake microphone beeps: the meter must see a beep, not just noise.
      await waitFor(host, 'leveeHost', (h) => h.level > 0.01, 'the level meter to show a beep', 10000);
      assert.notEqual(await host.locator('#meter').getAttribute('aria-valuenow'), null);
      const info = await api(base, 'GET', `/api/spaces/${space.id}`);
      assert.equal(info.json.state, 'live', 'the space went live');
    });

    test('the space page decodes and plays the live audio', async (t) => {
      assert.ok(host, 'the host page is live');
      listener = await openPage(`${base}/space/${space.id}`);
      await listener.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
      await listener.click('#play');
      await waitFor(listener, 'levee', (s) => s.framesDecoded > 50, 'more than 50 decoded frames');

      // The playback clock runs and audio keeps being decoded and scheduled while it does.
      const a = await numbers(listener, 'levee');
      const t0 = Date.now();
      const b = await waitFor(listener, 'levee', (s) => s.playbackClock - a.playbackClock >= 1.0,
        'the playback clock to advance by 1 s', 3000);
      const wallS = (Date.now() - t0) / 1000;
      assert.ok(wallS <= 2.5, `the playback clock took ${wallS} s of wall time to advance 1 s`);
      assert.ok(b.framesDecoded - a.framesDecoded >= 35,
        `decoding kept up: ${b.framesDecoded - a.framesDecoded} frames in ${wallS} s`);
      assert.ok(b.framesScheduled - a.framesScheduled >= 35,
        `playout kept up: ${b.framesScheduled - a.framesScheduled} frames scheduled in ${wallS} s`);

      const s = await waitFor(listener, 'levee', (x) => x.listeners >= 1 && x.latencyMs !== null,
        'a STATS message with the listener count', 5000);
      assert.equal(s.mode, 'websocket');
      assert.equal(s.state, 'playing', JSON.stringify(s));
      assert.equal(s.joinState, 'admitted', 'the page joined through the join API');
      assert.equal(s.access, 'open');
      assert.ok(s.gaps <= 2, `few gaps: ${JSON.stringify(s)}`);
      assert.ok(s.underruns <= 3, `few underruns: ${JSON.stringify(s)}`);
      assert.ok(Number.isFinite(s.latencyMs) && s.latencyMs > 0 && s.latencyMs < 3000,
        `latency is a plausible number of ms: ${JSON.stringify(s)}`);
      assert.ok(s.listeners >= 1, `listeners: ${JSON.stringify(s)}`);
      assert.equal(s.channels, 2, 'the HEAD declared two channels');
      t.diagnostic(`listener: ${JSON.stringify(s)}`);
      t.diagnostic(`host: ${JSON.stringify(await numbers(host, 'leveeHost'))}`);

      // The page shows what it measured.
      assert.match(await listener.locator('#stat-latency').textContent(), /^\d+$/);
      assert.ok(Number(await listener.locator('#stat-listeners').textContent()) >= 1);
      await shot(listener, 'space.png');
      await shot(host, 'host.png');
      assert.deepEqual(listener.leveeErrors, [], 'no errors on the space page');
      assert.deepEqual(host.leveeErrors, [], 'no errors on the host page');
    });

    test('without WebCodecs the space page plays the Ogg stream in <audio>', async () => {
      assert.ok(host, 'the host page is live');
      const page = await openPage(`${base}/space/${space.id}`, () => {
        delete window.AudioDecoder;
      });
      await page.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
      await page.click('#play');
      // Chromium's <audio> may report a moment of 'waiting' while it plays an Ogg stream
      // under load: wait for it to be playing past 1 s, rather than sampling one instant.
      const s = await waitFor(page, 'levee',
        (x) => x.mode === 'ogg' && x.playbackClock > 1.0 && x.state === 'playing',
        'the <audio> fallback to play more than 1 s');
      assert.equal(s.state, 'playing', JSON.stringify(s));
      await page.close();
    });

    test('the space page reconnects when its socket drops', async () => {
      assert.ok(host, 'the host page is live');
      const page = await openPage(`${base}/space/${space.id}`, () => {
        const Native = window.WebSocket;
        window.testSockets = [];
        window.WebSocket = class extends Native {
          constructor(...args) {
            super(...args);
            window.testSockets.push(this);
          }
        };
      });
      await page.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
      await page.click('#play');
      const before = await waitFor(page, 'levee', (x) => x.framesDecoded > 10, 'first frames');
      await page.evaluate(() => window.testSockets.at(-1).close(4000, 'test drops the socket'));
      const s = await waitFor(page, 'levee',
        (x) => x.reconnects >= 1 && x.state === 'playing' && x.framesDecoded > before.framesDecoded + 25,
        'the player to reconnect and play again');
      assert.equal(await page.evaluate(() => window.testSockets.length), 2, 'one new socket');
      assert.ok(s.admissions >= 2, `the reconnect joined again: ${JSON.stringify(s)}`);
      assert.ok(s.lastClose, 'the drop was seen');
      await page.close();
    });

    test('ending the space tells the listener and the host', async () => {
      assert.ok(host && listener, 'host and listener pages are open');
      const r = await api(base, 'DELETE', `/api/spaces/${space.id}`, undefined,
        { Authorization: `Bearer ${space.host_key}` });
      assert.equal(r.status, 200, r.text);
      await waitFor(listener, 'levee', (s) => s.state === 'ended', 'the listener to show "ended"');
      await waitFor(host, 'leveeHost', (h) => h.state === 'ended', 'the host to show "ended"');
      assert.match(await listener.locator('#status').textContent(), /ended/);
      assert.equal(await listener.locator('#play').isDisabled(), true);
    });
  });

  test('without MediaStreamTrackProcessor the host captures through an AudioWorklet', async () => {
    const space = await createSpace(base, 'Worklet capture check');
    const host = await openPage(`${base}/space/${space.id}/host#key=${encodeURIComponent(space.host_key)}`,
      () => { delete window.MediaStreamTrackProcessor; });
    await host.click('#go-live');
    const h = await waitFor(host, 'leveeHost', (x) => x.state === 'live' && x.packetsSent > 25,
      'the worklet host to be live with more than 25 packets sent');
    assert.equal(h.capture, 'AudioWorklet');
    const listener = await openPage(`${base}/space/${space.id}`);
    await listener.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await listener.click('#play');
    const s = await waitFor(listener, 'levee', (x) => x.framesDecoded > 25 && x.state === 'playing',
      'the listener to decode the worklet host\'s audio');
    assert.ok(s.gaps <= 2, JSON.stringify(s));
    assert.deepEqual(host.leveeErrors, [], 'no errors on the host page');
    await listener.close();
    await host.close();
  });

  test('the host page refuses a wrong host key', async () => {
    const space = await createSpace(base, 'Wrong key check');
    const page = await openPage(`${base}/space/${space.id}/host#key=not-the-key`);
    await page.click('#go-live');
    const h = await waitFor(page, 'leveeHost', (x) => x.state === 'error', 'the host page to refuse the key');
    assert.equal(h.packetsSent, 0);
    assert.equal(h.lastClose && h.lastClose.code, 1008, JSON.stringify(h));
    assert.match(await page.locator('#status').textContent(), /key/i);
    await page.close();
  });
});
