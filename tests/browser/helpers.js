// Shared helpers of the real-browser tests: the real `levee` binary on a loopback port, headless
// Debian chromium driven by playwright-core, bounded polling waits with clear failure messages.
//
// Environment: LEVEE_BIN (default <repo>/target/debug/levee), CHROMIUM (default
// /usr/bin/chromium), LEVEE_SCREENSHOTS=<dir> to save screenshots of the pages.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
export const LEVEE_BIN = process.env.LEVEE_BIN || path.join(repo, 'target', 'debug', 'levee');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SHOTS = process.env.LEVEE_SCREENSHOTS || '';
export const WAIT_MS = 20000;

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
  // WHIP on loopback: the server's ICE candidate is 127.0.0.1.
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

// ------------------------------------------------------------------ the server

/** Servers started by this test process, for diagnostics in failure messages. */
const servers = [];

/** The state and last log lines of every server this process started. */
export function serverNote() {
  return servers.map((s) => {
    const state = s.exited ? `levee EXITED (${s.exited})` : 'levee is running';
    const tail = s.log.join('').split('\n').slice(-15).join('\n  ');
    return `\n  ${state} (${s.base}${s.args.length ? ` ${s.args.join(' ')}` : ''}); its last log lines:\n  ${tail}`;
  }).join('');
}

/**
 * Starts `levee serve` on a free loopback port (or on `listen`, an address nodes may share with
 * `--reuse-port`) with `extraArgs`; resolves with { proc, base, adminKey, log, exited, args,
 * stop() }. Only this process's own child is ever killed (by its handle), never anything found
 * by name.
 */
export function startServer(extraArgs = [], { listen = '127.0.0.1:0' } = {}) {
  if (!fs.existsSync(LEVEE_BIN)) {
    throw new Error(`levee binary not found at ${LEVEE_BIN}: build it with \`cargo build -p levee\` ` +
      'or point LEVEE_BIN at it');
  }
  // Record nothing unless a test names a directory for it.
  const record = extraArgs.includes('--data-dir') ? [] : ['--no-record'];
  const args = ['serve', '--listen', listen, ...record, ...extraArgs];
  const proc = spawn(LEVEE_BIN, args, {
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
  const killOnExit = () => proc.kill('SIGKILL');
  process.once('exit', killOnExit);
  return new Promise((resolve, reject) => {
    let out = '';
    let done = false;
    let server = null;
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
      if (server) {
        if (out.length < 4096) out += chunk.toString();
        keep(chunk);
        return;
      }
      out += chunk.toString();
      const nl = out.indexOf('\n');
      if (nl < 0 || done) return;
      const first = out.slice(0, nl).trim();
      const m = /^levee listening on (http:\/\/\S+)$/.exec(first);
      if (!m) {
        fail(`unexpected first stdout line from levee: ${JSON.stringify(first)}`);
        return;
      }
      done = true;
      clearTimeout(timer);
      server = {
        proc,
        base: m[1].replace(/\/$/, ''),
        /** The admin key from the second stdout line (null until it has been printed). */
        get adminKey() {
          const k = /\nadmin key[^\n]*?:\s*(\S+)\s*\n/.exec(out);
          return k ? k[1] : null;
        },
        log,
        exited: null,
        args: extraArgs,
        stop() {
          const i = servers.indexOf(server);
          if (i >= 0) servers.splice(i, 1);
          process.removeListener('exit', killOnExit);
          proc.removeAllListeners('exit');
          proc.kill('SIGKILL');
        },
      };
      proc.removeAllListeners('exit');
      proc.on('exit', (code, sig) => { server.exited = `code ${code}, signal ${sig}`; });
      servers.push(server);
      resolve(server);
    });
  });
}

/** A loopback TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:`port`; fails after `ms`. */
async function acceptsOn(port, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not accept connections on port ${port} within ${ms} ms`);
    await delay(100);
  }
}

/** Spawns `cmd` with `args`, killed when the test process exits; fails loudly if missing. */
function spawnTool(cmd, args, install) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  proc.stderr.on('data', (c) => { log.push(c.toString()); while (log.length > 50) log.shift(); });
  const killOnExit = () => proc.kill('SIGKILL');
  process.once('exit', killOnExit);
  proc.on('error', (e) => {
    throw new Error(`cannot run ${cmd} (${install}): ${e.message}`);
  });
  return {
    proc,
    log,
    stop() {
      process.removeListener('exit', killOnExit);
      proc.kill('SIGKILL');
    },
  };
}

/** A NATS server with JetStream on a free loopback port: { url, stop() }. */
export async function startNats() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'levee-nats-'));
  const t = spawnTool('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir],
    "Debian's nats-server package");
  await acceptsOn(port, 10000, 'nats-server');
  return {
    url: `nats://127.0.0.1:${port}`,
    stop() {
      t.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A real ffmpeg publishing a `freq` Hz sine as Opus in 20-ms Ogg pages, in real time, to an
 * `icecast://` source URL for `seconds` at most: { stop() }.
 */
export function publishSine(sourceUrl, freq = 440, seconds = 120) {
  return spawnTool('ffmpeg', [
    '-hide_banner', '-loglevel', 'error', '-nostdin', '-re', '-f', 'lavfi',
    '-i', `sine=frequency=${freq}:sample_rate=48000:duration=${seconds}`,
    '-c:a', 'libopus', '-b:a', '32k', '-page_duration', '20000', '-f', 'ogg', sourceUrl,
  ], "Debian's ffmpeg package");
}

export async function api(base, method, p, body, headers = {}) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text, headers: res.headers };
}

export async function createSpace(base, title, extra = {}) {
  const r = await api(base, 'POST', '/api/spaces', { title, ...extra });
  assert.equal(r.status, 201, `POST /api/spaces answered ${r.status}: ${r.text}`);
  assert.ok(r.json && r.json.id && r.json.host_key, `no id/host_key in ${r.text}`);
  return r.json;
}

// ------------------------------------------------------------------ the browser

/** The page's exposed numbers (getters evaluated), or null. */
export function numbers(page, name) {
  return page.evaluate((n) => (window[n] ? { ...window[n] } : null), name);
}

/**
 * Polls `window[name]` until `pred` holds; fails after `timeoutMs` showing the last numbers,
 * the page's status line and its console errors.
 */
export async function waitFor(page, name, pred, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    last = await numbers(page, name);
    if (last && pred(last)) return last;
    if (Date.now() > deadline) {
      const status = await page.locator('#status').textContent().catch(() => '?');
      const lineText = await page.locator('#line-box:not([hidden])').textContent({ timeout: 200 }).catch(() => null);
      const errors = page.leveeErrors || [];
      assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}\n` +
        `  ${name} = ${JSON.stringify(last)}\n  status line: ${JSON.stringify(status)}\n` +
        (lineText ? `  line box: ${JSON.stringify(lineText.replace(/\s+/g, ' ').trim())}\n` : '') +
        `  page errors: ${JSON.stringify(errors.slice(0, 5))}${serverNote()}`);
    }
    await delay(100);
  }
}

export async function shot(page, file) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, file), fullPage: true });
}

/**
 * Launches headless chromium with a fresh profile; resolves with { context, openPage(url, init),
 * close() }. Pages opened through openPage collect their errors in `page.leveeErrors` (and the
 * join API's non-2xx answers, which chromium logs as errors, apart in `page.leveeJoinAnswers`).
 */
export async function launchBrowser(origins = []) {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`chromium not found at ${CHROMIUM}: install Debian's \`chromium\` package ` +
      '(apt-get install chromium) or set CHROMIUM');
  }
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'levee-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1000, height: 900 },
      timeout: WAIT_MS,
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  for (const origin of origins) {
    await context.grantPermissions(['microphone'], { origin }).catch(() => {});
  }
  return {
    context,
    /** Opens `url` after adding the init script `init` and running `setup(page)` (routes). */
    async openPage(url, init, setup) {
      const page = await context.newPage();
      page.leveeErrors = [];
      page.on('pageerror', (e) => page.leveeErrors.push(`pageerror: ${e.message}`));
      page.leveeJoinAnswers = [];
      page.on('console', (m) => {
        if (m.type() !== 'error') return;
        const where = m.location().url || '';
        // Chromium logs every 4xx/5xx fetch; for the join API those are answers of the
        // protocol (401 challenge, 429/403/503 refusals), kept apart from real errors.
        if (/^Failed to load resource/.test(m.text()) && /\/api\/spaces\/[^/?#]+\/join$/.test(where)) {
          page.leveeJoinAnswers.push(m.text());
          return;
        }
        page.leveeErrors.push(`console: ${m.text()} (${where})`);
      });
      if (init) await page.addInitScript(init);
      if (setup) await setup(page);
      await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}
