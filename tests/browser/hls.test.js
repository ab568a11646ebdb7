// Real-browser test of levee's LL-HLS: hls.js (the player most sites use, from npm) in
// headless chromium plays a space fed by a real ffmpeg, in low-latency mode, through Media
// Source Extensions (fMP4 with Opus). Every wait is bounded.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import {
  WAIT_MS, api, createSpace, launchBrowser, publishSine, serverNote, startServer, waitFor,
} from './helpers.js';

const require = createRequire(import.meta.url);
const HLS_JS = require.resolve('hls.js/dist/hls.min.js');

describe('LL-HLS in headless chromium', () => {
  let server = null;
  let browser = null;
  let source = null;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser([server.base]);
  });

  after(async () => {
    if (browser) await browser.close();
    if (source) source.stop();
    if (server) server.stop();
  });

  test('hls.js plays a live space in low-latency mode', async (t) => {
    const space = await createSpace(server.base, 'HLS in a browser');
    source = publishSine(space.urls.source, 440);
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const r = await fetch(space.urls.hls);
      if ((await r.text()).includes('#EXTINF:')) break;
      if (Date.now() > deadline) assert.fail(`no segment in the playlist${serverNote()}`);
      await new Promise((res) => setTimeout(res, 200));
    }
    // Any page of another origin than the playlist's would do: HLS of an open space is public.
    const page = await browser.openPage(`${server.base}/healthz`);
    await page.addScriptTag({ path: HLS_JS });
    await page.evaluate((url) => {
      const state = { errors: [], fatal: null, t: 0, latency: null, parts: 0, codec: null };
      window.hlsTest = state;
      const audio = document.createElement('audio');
      document.body.appendChild(audio);
      // eslint-disable-next-line no-undef
      const hls = new Hls({ lowLatencyMode: true });
      // eslint-disable-next-line no-undef
      const E = Hls.Events;
      hls.on(E.ERROR, (_, d) => {
        state.errors.push(`${d.type}/${d.details}`);
        if (d.fatal) state.fatal = `${d.type}/${d.details}`;
      });
      hls.on(E.FRAG_LOADED, (_, d) => { if (d.part) state.parts += 1; });
      hls.on(E.BUFFER_CODECS, (_, d) => { state.codec = d.audio ? d.audio.codec : null; });
      hls.on(E.MANIFEST_PARSED, () => { audio.play().catch((e) => state.errors.push(`play: ${e.message}`)); });
      hls.loadSource(url);
      hls.attachMedia(audio);
      setInterval(() => {
        state.t = audio.currentTime;
        state.latency = hls.latency;
      }, 100);
    }, space.urls.hls);
    const s = await waitFor(page, 'hlsTest', (x) => x.fatal !== null || x.t > 3,
      'hls.js to play 3 s of audio');
    assert.equal(s.fatal, null, `hls.js failed: ${JSON.stringify(s)}`);
    assert.ok(s.parts >= 4, `hls.js loaded parts (low latency): ${JSON.stringify(s)}`);
    assert.ok(Number.isFinite(s.latency) && s.latency > 0 && s.latency < 5,
      `hls.js's live latency is plausible: ${JSON.stringify(s)}`);
    t.diagnostic(`hls.js: ${JSON.stringify(s)}`);
    const info = await api(server.base, 'GET', `/api/spaces/${space.id}`);
    assert.equal(info.json.state, 'live');
    await page.close();
  });
});

describe('the web player over LL-HLS', () => {
  let server = null;
  let browser = null;
  let source = null;
  let space = null;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser([server.base]);
    space = await createSpace(server.base, 'Web player over HLS');
    source = publishSine(space.urls.source, 440);
    const deadline = Date.now() + WAIT_MS;
    while (!(await (await fetch(space.urls.hls)).text()).includes('#EXTINF:')) {
      if (Date.now() > deadline) assert.fail(`no segment in the playlist${serverNote()}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  });

  after(async () => {
    if (browser) await browser.close();
    if (source) source.stop();
    if (server) server.stop();
  });

  /** Plays the space page opened with `query`, `setup` routing its page first. */
  async function playPage(query, setup) {
    const page = await browser.openPage(`${server.base}/space/${space.id}${query}`, undefined, setup);
    await page.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await page.click('#play');
    return page;
  }

  test('?via=hls plays the live space through Media Source', async (t) => {
    const page = await playPage('?via=hls');
    const a = await waitFor(page, 'levee', (x) => x.mode === 'hls' && x.state === 'playing' && x.hlsParts >= 4,
      'the page to play LL-HLS');
    const b = await waitFor(page, 'levee', (x) => x.playbackClock - a.playbackClock >= 1.0 && x.hlsParts > a.hlsParts + 3,
      'the playback clock to advance 1 s on new parts', 5000);
    assert.match(await page.locator('#stat-mode').textContent(), /LL-HLS/);
    assert.deepEqual(page.leveeErrors, [], 'no errors on the page');
    t.diagnostic(`hls page: ${JSON.stringify({ parts: b.hlsParts, clock: b.playbackClock, state: b.state })}`);
    await page.close();
  });

  test('where WebSockets do not get through, the page falls back to LL-HLS', async () => {
    const page = await playPage('', async (p) => {
      // A network that drops every WebSocket before it opens.
      await p.routeWebSocket(/\/live\//, (ws) => ws.close({ code: 1006, reason: 'blocked' }));
    });
    const s = await waitFor(page, 'levee', (x) => x.mode === 'hls' && x.state === 'playing' && x.hlsParts >= 4,
      'the page to fall back to LL-HLS and play', 30000);
    assert.ok(s.reconnects >= 3, `it tried the WebSocket first: ${JSON.stringify(s)}`);
    await page.close();
  });
});
