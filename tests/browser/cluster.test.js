// Real-browser test of the web player in a cluster: an origin node fed by a real ffmpeg, two
// edge nodes sharing one port (`--reuse-port`), a real nats-server with JetStream, headless
// chromium listening through the shared port. The edge holding the listener is killed; the
// page must reconnect through the same address, land on the living edge and play again.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test
//
// Every wait is bounded; the time from the kill to audio again is printed as a diagnostic.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT_MS, api, createSpace, freePort, launchBrowser, numbers, publishSine, serverNote,
  startNats, startServer, waitFor,
} from './helpers.js';

describe('the web player in a cluster', () => {
  let nats = null;
  let origin = null;
  const edges = [];
  let source = null;
  let browser = null;

  before(async () => {
    nats = await startNats();
    origin = await startServer(['--nats', nats.url, '--node', 'origin']);
  });

  after(async () => {
    if (browser) await browser.close();
    if (source) source.stop();
    for (const s of [...edges, origin]) if (s) s.stop();
    if (nats) nats.stop();
  });

  test('a listener whose edge dies plays again from the other edge through the same address', async (t) => {
    const space = await createSpace(origin.base, 'Cluster: an edge dies');
    source = publishSine(space.urls.source);
    await waitFor0(async () => (await api(origin.base, 'GET', `/api/spaces/${space.id}`)).json?.state === 'live',
      'the space to go live on the origin');

    // One edge first, so that every connection of the page lands on it; then its twin.
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    const edgeArgs = (name) => ['--nats', nats.url, '--node', name, '--reuse-port'];
    edges.push(await startServer(edgeArgs('edge-1'), { listen }));
    const shared = edges[0].base;
    browser = await launchBrowser([shared]);
    const page = await browser.openPage(`${shared}/space/${space.id}`);
    await page.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await page.click('#play');
    await waitFor(page, 'levee', (s) => s.state === 'playing' && s.framesDecoded > 50,
      'the page to play from edge-1');
    edges.push(await startServer(edgeArgs('edge-2'), { listen }));

    // edge-1 dies with the page's socket on it.
    const before = await numbers(page, 'levee');
    const killedAt = Date.now();
    edges[0].proc.kill('SIGKILL');
    // Audio again: the first frame decoded after the reconnect.
    const first = await waitFor(page, 'levee',
      (x) => x.reconnects > before.reconnects && x.framesReceived > before.framesReceived + 1,
      'the page to reconnect and receive audio again', 15000);
    const againMs = Date.now() - killedAt;
    const s = await waitFor(page, 'levee',
      (x) => x.state === 'playing' && x.framesDecoded > first.framesDecoded + 25,
      'the page to play on after the reconnect');
    t.diagnostic(`edge killed: audio again ${againMs} ms later (polled every 100 ms), ` +
      `reconnects ${s.reconnects}, gaps ${s.gaps}`);
    assert.ok(s.admissions > before.admissions, `the page joined again: ${JSON.stringify(s)}`);
    // It is edge-2's listener now; the origin counts it cluster-wide.
    await waitFor0(async () => {
      const info = (await api(origin.base, 'GET', `/api/spaces/${space.id}`)).json;
      return info && info.listeners === 1 && info.listeners_here === 0;
    }, 'the origin to count the listener on edge-2 (listeners 1, listeners_here 0)');
    const onEdge = (await api(shared, 'GET', `/api/spaces/${space.id}`)).json;
    assert.equal(onEdge.listeners_here, 1, `edge-2 holds the listener: ${JSON.stringify(onEdge)}`);
    assert.deepEqual(page.leveeErrors.filter((e) => !/WebSocket|ERR_CONNECTION/.test(e)), [],
      'no errors on the page beyond the lost connection');
  });
});

/** Polls the async `pred` every 100 ms until it holds; fails after WAIT_MS. */
async function waitFor0(pred, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await pred().catch(() => false))) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}${serverNote()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
