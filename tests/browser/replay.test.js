// Real-browser test of a replay: a space fed by a real ffmpeg for 4 s is recorded
// (--data-dir); once it has ended its page offers the recording in an <audio controls> fed
// through Media Source, and seeking into it plays from there. Every wait is bounded.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  WAIT_MS, api, createSpace, launchBrowser, publishSine, serverNote, startServer, waitFor,
} from './helpers.js';

describe('a replay in headless chromium', () => {
  let server = null;
  let browser = null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'levee-replay-'));

  before(async () => {
    server = await startServer(['--data-dir', dir]);
    browser = await launchBrowser([server.base]);
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('an ended space plays its recording and seeks in it', async (t) => {
    const space = await createSpace(server.base, 'Recorded for a replay');
    const source = publishSine(space.urls.source, 440, 4);
    const deadline = Date.now() + WAIT_MS;
    // The source ends by itself after 4 s; then the host ends the space.
    while (source.proc.exitCode === null) {
      if (Date.now() > deadline) assert.fail(`ffmpeg did not end${serverNote()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const r = await api(server.base, 'DELETE', `/api/spaces/${space.id}`, undefined,
      { Authorization: `Bearer ${space.host_key}` });
    assert.equal(r.status, 200, r.text);
    const page = await browser.openPage(`${server.base}/space/${space.id}`);
    const s = await waitFor(page, 'levee',
      (x) => x.replay && x.replay.loaded === x.replay.segments && x.replay.segments >= 3,
      'the recording to be loaded');
    assert.equal(s.replay.mode, 'mse');
    await page.locator('#replay-box').waitFor({ state: 'visible', timeout: WAIT_MS });
    assert.match(await page.getAttribute('#replay-download', 'href'), /\/replay\.ogg$/);
    // Seek two seconds in and play from there.
    const end = await page.evaluate(async () => {
      const a = document.getElementById('replay-audio');
      const start = a.buffered.start(0);
      a.currentTime = start + 2;
      await a.play();
      return a.buffered.end(a.buffered.length - 1) - start;
    });
    assert.ok(end >= 3, `the recording lasts ${end} s in the buffer`);
    const at = await page.waitForFunction(() => {
      const a = document.getElementById('replay-audio');
      return a.currentTime - a.buffered.start(0) > 2.5 ? a.currentTime - a.buffered.start(0) : false;
    }, null, { timeout: WAIT_MS });
    t.diagnostic(`replay: ${JSON.stringify(s.replay)}, playing at ${await at.jsonValue()} s after seeking to 2 s`);
    assert.deepEqual(page.leveeErrors, [], 'no errors on the page');
    await page.close();
  });
});
