// Real-browser tests of levee's web pages: the real `levee` binary on a loopback port, headless
// Debian chromium (driven by playwright-core) with a fake microphone. Every wait is bounded and
// polls the numbers the pages expose (window.levee, window.leveeHost).
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test
//
// Environment: LEVEE_BIN (default <repo>/target/debug/levee), CHROMIUM (default
// /usr/bin/chromium), LEVEE_SCREENSHOTS=<dir> to save screenshots of the pages.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const LEVEE_BIN = process.env.LEVEE_BIN || path.join(repo, 'target', 'debug', 'levee');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.LEVEE_SCREENSHOTS || '';
const WAIT_MS = 20000;

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

// ------------------------------------------------------------------ the server

/** The running server, for diagnostics in failure messages. */
let current = null;

function serverNote() {
  if (!current) return '';
  const state = current.exited ? `levee EXITED (${current.exited})` : 'levee is running';
  const tail = current.log.join('').split('\n').slice(-15).join('\n  ');
  return `\n  ${state}; its last log lines:\n  ${tail}`;
}

/** Starts `levee serve` on a free loopback port; resolves with { proc, base, log, exited }. */
function startServer() {
  if (!fs.existsSync(LEVEE_BIN)) {
    throw new Error(`levee binary not found at ${LEVEE_BIN}: build it with \`cargo build -p levee\` ` +
      'or point LEVEE_BIN at it');
  }
  const proc = spawn(LEVEE_BIN, ['serve', '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  // Keep both pipes drained (a full pipe would block the server); keep a tail for diagnostics.
  const log = [];
  const keep = (chunk) => {
    log.push(chunk.toString());
    while (log.length > 200) log.shift();
  };
  proc.stderr.on('data', keep);
  // Never leave the server behind, even if the test process is stopped early.
  process.once('exit', () => proc.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let out = '';
    let done = false;
    const fail = (msg) => {
      if (done) return;
      done = true;
      proc.kill('SIGKILL');
      reject(new Error(`${msg}\nserver output:\n${out}${log.join('')}`));
    };
    const timer = setTimeout(() => fail('levee did not print its URL within 15 s'), 15000);
    proc.on('error', (e) => fail(`could not start ${LEVEE_BIN}: ${e.message}`));
    proc.on('exit', (code, sig) => fail(`levee exited early (code ${code}, signal ${sig})`));
    proc.stdout.on('data', (chunk) => {
      if (done) {
        keep(chunk);
        return;
      }
      out += chunk.toString();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      const first = out.slice(0, nl).trim();
      const m = /^levee listening on (http:\/\/\S+)$/.exec(first);
      if (!m) {
        fail(`unexpected first stdout line from levee: ${JSON.stringify(first)}`);
        return;
      }
      done = true;
      clearTimeout(timer);
      const server = { proc, base: m[1].replace(/\/$/, ''), log, exited: null };
      proc.removeAllListeners('exit');
      proc.on('exit', (code, sig) => { server.exited = `code ${code}, signal ${sig}`; });
      current = server;
      resolve(server);
    });
  });
}

async function api(base, method, p, body, headers = {}) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

async function createSpace(base, title) {
  const r = await api(base, 'POST', '/api/spaces', { title });
  assert.equal(r.status, 201, `POST /api/spaces answered ${r.status}: ${r.text}`);
  assert.ok(r.json && r.json.id && r.json.host_key, `no id/host_key in ${r.text}`);
  return r.json;
}

// ------------------------------------------------------------------ the browser

/** The page's exposed numbers (getters evaluated), or null. */
function numbers(page, name) {
  return page.evaluate((n) => (window[n] ? { ...window[n] } : null), name);
}

/**
 * Polls `window[name]` until `pred` holds; fails after `timeoutMs` showing the last numbers,
 * the page's status line and its console errors.
 */
async function waitFor(page, name, pred, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    last = await numbers(page, name);
    if (last && pred(last)) return last;
    if (Date.now() > deadline) {
      const status = await page.locator('#status').textContent().catch(() => '?');
      const errors = page.leveeErrors || [];
      assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}\n` +
        `  ${name} = ${JSON.stringify(last)}\n  status line: ${JSON.stringify(status)}\n` +
        `  page errors: ${JSON.stringify(errors.slice(0, 5))}${serverNote()}`);
    }
    await delay(100);
  }
}

async function shot(page, file) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, file), fullPage: true });
}

// ------------------------------------------------------------------ the tests

describe('levee web pages in headless chromium', () => {
  let server = null;
  let context = null;
  let userDataDir = null;
  let base = '';

  async function openPage(url, init) {
    const page = await context.newPage();
    page.leveeErrors = [];
    page.on('pageerror', (e) => page.leveeErrors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') page.leveeErrors.push(`console: ${m.text()} (${m.location().url})`);
    });
    if (init) await page.addInitScript(init);
    await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });
    return page;
  }

  before(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`chromium not found at ${CHROMIUM}: install Debian's \`chromium\` package ` +
        '(apt-get install chromium) or set CHROMIUM');
    }
    server = await startServer();
    base = server.base;
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'levee-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1000, height: 900 },
      timeout: WAIT_MS,
    });
    await context.grantPermissions(['microphone'], { origin: base }).catch(() => {});
  });

  after(async () => {
    if (context) await context.close().catch(() => {});
    if (server) {
      if (server.exited) console.error(`levee exited during the tests:${serverNote()}`);
      server.proc.removeAllListeners('exit');
      server.proc.kill('SIGKILL');
    }
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
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
      const s = await waitFor(page, 'levee', (x) => x.mode === 'ogg' && x.playbackClock > 1.0,
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
