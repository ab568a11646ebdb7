// Real-browser test of WebRTC speakers: the real `levee` binary, two headless Chromium pages
// publishing their fake microphones over WHIP (RFC 9725) with the speaker keys the host got,
// and one listener page. The listener decodes the stage's mix and sees both speakers speak
// (STAGE messages), each speaker hears the others back on its own connection, and a wrong
// key and a malformed offer are refused with a reason while the stage goes on.
//
//   cargo build -p levee && cd tests/browser && npm ci && npm test

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT_MS, api, createSpace, launchBrowser, numbers, serverNote, shot, startServer, waitFor,
} from './helpers.js';

describe('WebRTC speakers (WHIP)', () => {
  let server = null;
  let browser = null;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser([server.base]);
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) {
      if (server.exited) console.error(`levee exited during the tests:${serverNote()}`);
      server.stop();
    }
  });

  test('two browsers speak over WHIP, hear each other, and one listener hears both', async () => {
    const space = await createSpace(server.base, 'WHIP interview');
    const auth = { Authorization: `Bearer ${space.host_key}` };
    const invite = async (name) => {
      const r = await api(server.base, 'POST', `/api/spaces/${space.id}/speakers`, { name }, auth);
      assert.equal(r.status, 201, r.text);
      assert.ok(r.json.urls.whip.endsWith(`/live/${space.id}/whip`), r.text);
      return r.json;
    };
    const xi = await invite('Xi');
    const yu = await invite('Yu');

    const speakers = [];
    for (const s of [xi, yu]) {
      const page = await browser.openPage(s.urls.page);
      await page.click('#join');
      speakers.push(page);
    }
    for (const page of speakers) {
      await waitFor(page, 'leveeSpeak', (x) => x.state === 'live' && x.packetsSent > 50,
        'the speaker connected and sending');
    }

    const listener = await browser.openPage(`${server.base}/space/${space.id}`);
    await listener.locator('#play:not([disabled])').waitFor({ timeout: WAIT_MS });
    await listener.click('#play');
    await waitFor(listener, 'levee', (x) => x.framesDecoded > 100, 'the listener decoding the mix');
    const both = (1 << xi.slot) | (1 << yu.slot);
    await waitFor(listener, 'leveeStage', (x) => (x.everSpoke & both) === both,
      'both speakers seen speaking in the stream');

    // Each speaker hears the others: packets come back on its own connection.
    const heard = [];
    for (const page of speakers) {
      heard.push(await waitFor(page, 'leveeSpeak', (x) => x.packetsReceived > 50 && x.rttMs !== null,
        'the mix of the others coming back'));
    }
    const st = await api(server.base, 'GET', `/api/spaces/${space.id}/stage`);
    assert.equal(st.json.mixing, true);
    assert.deepEqual(st.json.speakers.map((x) => x.on_stage), [true, true]);
    for (const h of heard) {
      // Mouth-to-ear between speakers: the network both ways (round trip), the mixer's jitter
      // buffer (60 ms, docs/benchmarks.md §9) and the receiving browser's jitter buffer.
      const estimate = h.rttMs + 60 + (h.jitterBufferMs ?? 0);
      console.log(`speaker-to-speaker over WHIP: rtt ${h.rttMs} ms, receive jitter buffer ${h.jitterBufferMs} ms, estimate ${estimate} ms`);
      assert.ok(estimate < 300, `speaker-to-speaker about ${estimate} ms`);
    }
    const lis = await numbers(listener, 'levee');
    console.log(`listener latency (capture to playback) ${lis.latencyMs} ms`);
    await shot(speakers[0], 'whip-speaker.png');

    // Bad input: refused with a reason, the stage goes on.
    const url = `${server.base}/live/${space.id}/whip`;
    const wrong = await fetch(url, {
      method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: 'Bearer nope' }, body: 'v=0\r\n',
    });
    assert.equal(wrong.status, 401);
    assert.match(await wrong.text(), /key/);
    const garbage = await fetch(url, {
      method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${xi.key}` },
      body: 'v=0\r\nthis is not an offer\r\n',
    });
    assert.equal(garbage.status, 400);
    assert.match(await garbage.text(), /SDP|offer/);
    const before = (await numbers(listener, 'levee')).framesDecoded;
    await waitFor(listener, 'levee', (x) => x.framesDecoded > before + 50, 'the mix still flowing');
    for (const page of speakers) {
      const x = await numbers(page, 'leveeSpeak');
      assert.equal(x.state, 'live', 'the speakers were not disturbed');
    }
    // The host speaks from the same page with the host key (the host page links it) and
    // hears the stage too.
    const hostPage = await browser.openPage(`${server.base}/space/${space.id}/host#key=${space.host_key}`);
    await hostPage.locator('#speak-link[href*="/speak#key="]').waitFor({ timeout: WAIT_MS });
    const speakHref = await hostPage.locator('#speak-link').getAttribute('href');
    const hostSpeaks = await browser.openPage(new URL(speakHref, server.base).href);
    await hostSpeaks.click('#join');
    await waitFor(hostSpeaks, 'leveeSpeak', (x) => x.state === 'live' && x.packetsReceived > 50,
      'the host on WebRTC, hearing the speakers');
    await waitFor(listener, 'leveeStage', (x) => (x.everSpoke & 1) === 1, 'the host seen speaking (slot 0)');

    // Leaving ends the session on the server.
    await speakers[1].click('#leave');
    await waitFor(speakers[1], 'leveeSpeak', (x) => x.state === 'idle', 'Yu left');
    const deadline = Date.now() + 5000;
    for (;;) {
      const s2 = await api(server.base, 'GET', `/api/spaces/${space.id}/stage`);
      if (!s2.json.speakers[1].on_stage) break;
      assert.ok(Date.now() < deadline, 'Yu off the stage within 5 s of leaving');
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});
