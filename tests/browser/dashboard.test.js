// Real-browser test of the audience dashboard: the real `levee` binary fed by a real ffmpeg,
// listeners reading its Ogg stream over real sockets, and headless chromium showing
// /space/{id}/dashboard and /dashboard. The page must follow the listeners live (tiles and
// charts), count views once they took --view-after of audio, and show the definitions.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createSpace, launchBrowser, publishSine, serverNote, shot, startServer, waitFor,
} from './helpers.js';

/** Reads `url` until stopped: { stop(), bytes }. */
function listener(url) {
  const ctl = new AbortController();
  const l = { bytes: 0, stop: () => ctl.abort() };
  (async () => {
    try {
      const res = await fetch(url, { signal: ctl.signal, headers: { 'User-Agent': 'dash-test' } });
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        l.bytes += value.length;
      }
    } catch { /* stopped */ }
  })();
  return l;
}

describe('the audience dashboard', () => {
  let server = null;
  let browser = null;
  let source = null;
  const listeners = [];

  before(async () => {
    server = await startServer(['--view-after', '2s']);
    browser = await launchBrowser([server.base]);
  });

  after(async () => {
    for (const l of listeners) l.stop();
    if (source) source.stop();
    if (browser) await browser.close();
    if (server) {
      if (server.exited) console.error(`levee exited during the tests:${serverNote()}`);
      server.stop();
    }
  });

  test('follows listeners live, counts their views, and explains the numbers', async () => {
    const space = await createSpace(server.base, 'Dashboard check');
    source = publishSine(space.urls.source);
    const page = await browser.openPage(space.urls.dashboard);
    await waitFor(page, 'leveeDashboard', (d) => d.updates >= 1, 'the dashboard to load its numbers');
    // Three listeners, each from its own connection.
    for (let i = 0; i < 3; i++) listeners.push(listener(space.urls.ogg));
    let d = await waitFor(page, 'leveeDashboard', (x) => x.listeners === 3, 'three listeners on the dashboard');
    assert.equal(d.views, 0, 'no view before 2 s of audio');
    d = await waitFor(page, 'leveeDashboard', (x) => x.views === 1 && x.uniques === 1,
      'one view: three sessions of one identity (one address, one User-Agent)');
    assert.equal(await page.textContent('#n-views-bound'), 'exact');
    // The charts drew the listeners over time.
    d = await waitFor(page, 'leveeDashboard',
      (x) => x.points >= 3 && x.charts['chart-listeners']?.listeners?.max === 3,
      'the listeners chart to reach 3');
    assert.equal(d.charts['chart-views'].views.last, 1);
    assert.ok(await page.locator('#chart-listeners polyline').count() === 1);
    // Two leave: the page follows.
    listeners[0].stop();
    listeners[1].stop();
    d = await waitFor(page, 'leveeDashboard', (x) => x.listeners === 1, 'one listener left');
    assert.equal(d.peak, 3);
    assert.match(await page.textContent('#n-peak-at'), /^at \d\d:\d\d:\d\d$/);
    // The definitions come with the numbers.
    const defs = await page.textContent('#definitions');
    assert.match(defs, /2 s of audio/);
    assert.match(defs, /HyperLogLog/);
    assert.ok(listeners[2].bytes > 10000, `the remaining listener reads audio: ${listeners[2].bytes} bytes`);
    await shot(page, 'dashboard.png');

    // The node's dashboard lists the space and the same numbers.
    const node = await browser.openPage(`${server.base}/dashboard`);
    const row = node.locator(`#top-rows tr[data-space-id="${space.id}"]`);
    await row.waitFor({ timeout: 20000 });
    const nd = await waitFor(node, 'leveeDashboard', (x) => x.listeners === 1 && x.views === 1,
      'the node dashboard to show one listener and one view');
    assert.equal(nd.scope, 'node');
    assert.match(await row.textContent(), /Dashboard check/);
    assert.deepEqual([...page.leveeErrors, ...node.leveeErrors], [], 'no errors on the pages');
    await shot(node, 'dashboard-node.png');
    await node.close();
    await page.close();
  });
});
