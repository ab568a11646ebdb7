// Real-browser test of the stage panel: the real `levee` binary, a real ffmpeg speaker
// publishing with its own key, headless chromium showing the space page (a listener) and the
// host page. The listener sees who speaks from the STAGE messages in its stream, asks to
// speak, and gets its speaker link when the host accepts; the host mutes the speaker and the
// listener's mark follows.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT_MS, api, createSpace, launchBrowser, publishSine, serverNote, shot, startServer, waitFor,
} from './helpers.js';

describe('the stage panel', () => {
  let server = null;
  let browser = null;
  let source = null;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser([server.base]);
  });

  after(async () => {
    if (source) source.stop();
    if (browser) await browser.close();
    if (server) {
      if (server.exited) console.error(`levee exited during the tests:${serverNote()}`);
      server.stop();
    }
  });

  test('shows who speaks from the stream, and a request to speak goes through the host', async () => {
    const space = await createSpace(server.base, 'Stage check');
    const auth = { Authorization: `Bearer ${space.host_key}` };
    const ada = await api(server.base, 'POST', `/api/spaces/${space.id}/speakers`, { name: 'Ada' }, auth);
    assert.equal(ada.status, 201, ada.text);
    source = publishSine(ada.json.urls.source, 440);

    const listener = await browser.openPage(`${server.base}/space/${space.id}`);
    await listener.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await listener.click('#play');
    const bit = 1 << ada.json.slot;
    let st = await waitFor(listener, 'leveeStage',
      (s) => s.stageMessages > 0 && (s.speaking & bit) !== 0 && s.speakers.length === 1,
      'Ada speaking, from the STAGE messages');
    assert.equal(st.speakers[0].name, 'Ada');
    const row = listener.locator(`#stage-list li[data-slot="${ada.json.slot}"]`);
    assert.match(await row.getAttribute('class'), /speaking/);
    assert.equal(await row.locator('.stage-tag').textContent(), 'speaking');

    // The listener asks to speak; the host page shows the request and accepts it.
    await listener.fill('#ask-name', 'Dee');
    await listener.click('#stage-ask button[type=submit]');
    await waitFor(listener, 'leveeStage', (s) => s.request && s.request.id, 'the request to be made');
    const host = await browser.openPage(`${server.base}/space/${space.id}/host#key=${space.host_key}`);
    await waitFor(host, 'leveeStage', (s) => s.requests.some((r) => r.name === 'Dee' && r.answer === 'waiting'),
      'the request on the host page');
    await host.click('#stage-requests button:has-text("Accept")');
    st = await waitFor(listener, 'leveeStage', (s) => s.request.answer === 'accepted' && s.request.key,
      'the listener told it was accepted, with its key');
    const go = await listener.locator('#stage-go').getAttribute('href');
    assert.ok(go.includes('/speak#key='), go);
    await waitFor(listener, 'leveeStage', (s) => s.speakers.some((x) => x.name === 'Dee'),
      'Dee on the listener\'s stage list (the revision moved)');

    // The host mutes Ada: the listener's mark follows the stream.
    await host.click(`#stage-list li[data-slot="${ada.json.slot}"] button:has-text("Mute")`);
    st = await waitFor(listener, 'leveeStage', (s) => (s.speaking & bit) === 0
      && s.speakers.some((x) => x.name === 'Ada' && x.muted), 'Ada muted on the listener page');
    assert.equal(await row.locator('.stage-tag').textContent(), 'muted');
    const answer = await api(server.base, 'GET', `/api/spaces/${space.id}/stage`);
    assert.equal(answer.json.speakers.find((x) => x.name === 'Ada').muted, true);
    await shot(listener, 'stage-listener.png');
    await shot(host, 'stage-host.png');
  });
});
