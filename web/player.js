// levee space page: live playback over WebSocket + WebCodecs AudioDecoder, with a small adaptive
// playout buffer on an AudioContext. Falls back to the progressive Ogg/Opus stream in an
// <audio> element where WebCodecs cannot decode Opus.
//
// Every connection starts with the join API (POST /api/spaces/{id}/join, docs/protocol.md): it
// answers with a ticket and stream URLs (200), a place in line (202: the page shows it, counts
// the ETA down and asks again with its token), a proof-of-work challenge (401: solved in a Web
// Worker, /assets/pow-worker.js) or a refusal with a time to come back (429/403/503). All waits
// are jittered, so a crowd told the same thing does not come back in lockstep. Tickets live
// about a minute, so every reconnect joins again.
//
// Wire format (docs/protocol.md): binary messages, first byte = kind, integers big-endian.
//   0x01 HEAD  + 19-byte OpusHead
//   0x02 AUDIO + seq u64 + capture time u64 (µs since epoch) + one Opus packet
//   0x03 STATS + server time u64 (µs since epoch) + listeners u32
//   0x04 STAGE + revision u32 + on-stage bits u32 + speaking bits u32 (stage.js shows them)
'use strict';

(() => {
  const KIND_HEAD = 0x01;
  const KIND_AUDIO = 0x02;
  const KIND_STATS = 0x03;
  const KIND_STAGE = 0x04;

  const TARGET_LEAD_S = 0.18;     // playout buffer when chunks are small
  const LEAD_OVER_CHUNK_S = 0.12; // headroom over the largest burst (server chunk) seen
  const UNDERRUN_MARGIN_S = 0.01; // less than this ahead of the clock: re-anchor (underrun)
  const DRIFT_MARGIN_S = 0.25;    // this much above target (+ one chunk): re-anchor (too late)
  const MAX_EXTRA_LEAD_S = 0.4;   // most the buffer grows after repeated underruns
  const OFFSET_WINDOW = 30;       // STATS samples kept for the clock-offset estimate
  const INFO_REFRESH_MS = 5000;
  const STALL_MS = 1500;          // no audio for this long while playing: "waiting"

  const $ = (id) => document.getElementById(id);
  const ui = {
    title: $('space-title'),
    state: $('space-state'),
    play: $('play'),
    volume: $('volume'),
    status: $('status'),
    audio: $('fallback-audio'),
    listeners: $('stat-listeners'),
    latency: $('stat-latency'),
    buffer: $('stat-buffer'),
    received: $('stat-received'),
    decoded: $('stat-decoded'),
    gaps: $('stat-gaps'),
    underruns: $('stat-underruns'),
    reconnects: $('stat-reconnects'),
    offset: $('stat-offset'),
    mode: $('stat-mode'),
    oggLink: $('ogg-link'),
    oggNote: $('ogg-ticket-note'),
    access: $('space-access'),
    lineBox: $('line-box'),
    lineText: $('line-text'),
    lineProgress: $('line-progress'),
    lineHint: $('line-hint'),
    joins: $('stat-joins'),
    pow: $('stat-pow'),
  };

  const parts = location.pathname.split('/').filter(Boolean); // ["space", id, ...]
  const spaceId = decodeURIComponent(parts[1] || '');
  const apiUrl = `/api/spaces/${encodeURIComponent(spaceId)}`;
  const dashLink = $('dashboard-link');
  if (dashLink) dashLink.href = `/space/${encodeURIComponent(spaceId)}/dashboard`;
  // ?via=hls: play LL-HLS (what a cache or CDN carries) instead of the WebSocket.
  const VIA = new URLSearchParams(location.search).get('via');

  // Numbers exposed for tests and curious people.
  const levee = {
    state: 'idle',          // idle | connecting | buffering | playing | waiting | reconnecting | ended | error
    spaceState: null,       // scheduled | live | ended, from the API
    mode: null,             // "websocket" (WebCodecs), "hls" (LL-HLS through Media Source) or "ogg" (<audio>)
    hlsParts: 0,            // LL-HLS parts appended (mode "hls")
    framesReceived: 0,
    framesDecoded: 0,
    framesScheduled: 0,
    framesDropped: 0,
    decodeErrors: 0,
    gaps: 0,
    lastSeq: null,
    latencyMs: null,
    listeners: null,
    underruns: 0,
    reanchors: 0,
    reconnects: 0,
    bufferMs: null,
    targetMs: null,         // playout buffer aimed at
    burstMs: null,          // largest burst of audio seen arriving at once (≈ server chunk)
    clockOffsetMs: null,
    channels: null,
    lastClose: null,
    // Joining (POST /api/spaces/{id}/join).
    joinState: 'idle',      // idle | joining | queued | challenge | admitted | limited | banned | full | retrying | ended | error
    joins: 0,               // join requests sent
    admissions: 0,          // tickets received
    access: null,           // the access mode the last admission was under
    queuePosition: null,    // place in line while queued (1 = next), from the last answer
    queueEtaMs: null,       // the server's estimate at the last answer
    queueFirstPosition: null,
    queuedMs: null,         // time spent in line before the last admission
    powDifficulty: null,    // difficulty of the last challenge
    powMs: null,            // time the worker took to solve it
    powHashes: null,        // hashes it tried
    powEngine: null,        // "SubtleCrypto" or "JavaScript"
    powWorkers: null,       // workers that searched in parallel
    retryInMs: null,        // while refused (limited, banned, full, retrying): time until the next try
  };
  Object.defineProperty(levee, 'playbackClock', {
    enumerable: true,
    get() {
      if (ctx) return ctx.currentTime;
      if (levee.mode === 'ogg' || levee.mode === 'hls') return ui.audio.currentTime;
      return 0;
    },
  });
  window.levee = levee;

  let info = null;         // last GET /api/spaces/{id}
  let wanted = false;      // the listener pressed Play and has not pressed Stop
  let ctx = null;
  let gain = null;
  let ws = null;
  let decoder = null;
  let decoderHead = '';
  let pending = [];        // capture times (µs) of packets inside the decoder, in order
  let playhead = 0;        // AudioContext time where the next frame starts
  let anchored = false;
  const playing = new Set();
  let retryTimer = 0;
  let attempt = 0;
  let offsetSamples = [];
  let lastStatsWall = 0;
  let latencyEma = null;
  let lastAudioWall = 0;
  let burstWall = 0;
  let burstDur = 0;
  let bursts = [];
  let extraLead = 0;
  let extraLeadSince = 0;

  // ---------------------------------------------------------------- UI

  function setState(state, message, isError = false) {
    levee.state = state;
    if (message !== undefined) {
      ui.status.textContent = message;
      ui.status.classList.toggle('error', isError);
    }
    renderButton();
    renderStats();
  }

  function renderButton() {
    const ended = levee.spaceState === 'ended' || levee.state === 'ended';
    if (ended) {
      ui.play.textContent = 'Ended';
      ui.play.disabled = true;
    } else if (wanted) {
      ui.play.textContent = '■ Stop';
      ui.play.disabled = false;
    } else {
      ui.play.textContent = '▶ Play';
      ui.play.disabled = !info;
    }
    ui.play.setAttribute('aria-pressed', wanted ? 'true' : 'false');
  }

  function renderSpace() {
    if (!info) return;
    ui.title.textContent = info.title || info.id;
    document.title = `${info.title || info.id} · levee`;
    const state = info.state;
    ui.state.textContent = state;
    ui.state.className = `badge ${state}`;
    const access = info.access || 'open';
    ui.access.hidden = access === 'open';
    ui.access.textContent = access === 'challenge' ? 'checks browsers' : access;
    ui.access.title = access === 'ticketed'
      ? 'Listeners join through the join API and get a ticket'
      : access === 'challenge' ? 'Browsers solve a small proof of work before joining' : '';
    renderOggLink();
    if (state === 'ended' && !replayTried) {
      replayTried = true;
      loadReplay();
    }
  }

  // ---------------------------------------------------------------- replay
  //
  // An ended space's recording (docs/protocol.md, "Replay"): its VOD playlist's segments
  // appended in order to Media Source behind an <audio controls>, whose bar seeks anywhere
  // once they are in (a few MiB an hour); without Media Source, the Ogg download plays.

  let replayTried = false;

  async function loadReplay(attempt = 0) {
    const base = `/live/${encodeURIComponent(spaceId)}/replay`;
    const r = await fetch(`${base}/index.m3u8`).catch(() => null);
    if (r && r.status === 409 && attempt < 10) {
      // Its last segment is being written a moment after the end: ask again.
      setTimeout(() => loadReplay(attempt + 1), 1000);
      return;
    }
    if (!r || !r.ok) return;
    const playlist = await r.text();
    const names = [...playlist.matchAll(/^(r\d+\.m4s)$/gm)].map((m) => m[1]);
    const seconds = [...playlist.matchAll(/^#EXTINF:([\d.]+),/gm)].reduce((a, m) => a + Number(m[1]), 0);
    if (!names.length) return;
    const box = $('replay-box');
    const audio = $('replay-audio');
    const status = $('replay-status');
    $('replay-download').href = `${base}.ogg`;
    box.hidden = false;
    levee.replay = { segments: names.length, loaded: 0, seconds, mode: null };
    status.textContent = `${Math.round(seconds)} s recorded.`;
    if (typeof MediaSource === 'undefined' || !MediaSource.isTypeSupported(HLS_TYPE)) {
      levee.replay.mode = 'ogg';
      audio.src = `${base}.ogg`;
      return;
    }
    levee.replay.mode = 'mse';
    const ms = new MediaSource();
    audio.src = URL.createObjectURL(ms);
    await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
    const sb = ms.addSourceBuffer(HLS_TYPE);
    const append = (bytes) => new Promise((resolve, reject) => {
      sb.addEventListener('updateend', resolve, { once: true });
      sb.addEventListener('error', reject, { once: true });
      sb.appendBuffer(bytes);
    });
    try {
      for (const name of ['init.mp4', ...names]) {
        const seg = await fetch(`${base}/${name}`);
        if (!seg.ok) throw new Error(`${name} answered ${seg.status}`);
        await append(await seg.arrayBuffer());
        if (name !== 'init.mp4') levee.replay.loaded += 1;
        if (levee.replay.loaded === 1 && sb.buffered.length && audio.currentTime < sb.buffered.start(0)) {
          audio.currentTime = sb.buffered.start(0);
        }
      }
      ms.endOfStream();
    } catch (e) {
      status.textContent = `The recording could not be loaded whole (${e.message}).`;
    }
  }

  function renderOggLink() {
    const access = (info && info.access) || 'open';
    const fresh = joined && joined.urls && joined.urls.ogg && Date.now() < joined.expiresAt;
    if (access !== 'open' && fresh) {
      ui.oggLink.href = sameSchemeUrl(joined.urls.ogg);
    } else if (info && info.urls && info.urls.ogg) {
      ui.oggLink.href = sameSchemeUrl(info.urls.ogg);
    }
    ui.oggNote.hidden = access === 'open';
  }

  const fmt = (v) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : String(Math.round(v)));

  function renderStats() {
    if (ctx && anchored) {
      levee.bufferMs = Math.max(0, Math.round((playhead - ctx.currentTime) * 1000));
    }
    ui.listeners.textContent = levee.listeners === null ? '–' : String(levee.listeners);
    ui.latency.textContent = fmt(levee.latencyMs);
    ui.buffer.textContent = levee.mode === 'websocket' ? fmt(levee.bufferMs) : '–';
    ui.received.textContent = String(levee.framesReceived);
    ui.decoded.textContent = String(levee.framesDecoded);
    ui.gaps.textContent = String(levee.gaps);
    ui.underruns.textContent = String(levee.underruns);
    ui.reconnects.textContent = String(levee.reconnects);
    ui.offset.textContent = fmt(levee.clockOffsetMs);
    ui.joins.textContent = String(levee.joins);
    ui.pow.textContent = fmt(levee.powMs);
    ui.mode.textContent = levee.mode === 'websocket'
      ? 'WebSocket + WebCodecs'
      : levee.mode === 'hls' ? 'LL-HLS (fMP4/Opus) through Media Source'
      : levee.mode === 'ogg' ? 'Ogg/Opus stream in <audio>' : '–';
  }

  // ---------------------------------------------------------------- space info

  function sameSchemeUrl(url) {
    // Pages served over https must not open ws:// or http:// media URLs.
    if (location.protocol === 'https:') {
      if (url.startsWith('ws:')) return `wss:${url.slice(3)}`;
      if (url.startsWith('http:')) return `https:${url.slice(5)}`;
    }
    return url;
  }

  function wsUrl() {
    if (joined && joined.urls && joined.urls.ws) return sameSchemeUrl(joined.urls.ws);
    if (info && info.urls && info.urls.ws) return sameSchemeUrl(info.urls.ws);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/live/${encodeURIComponent(spaceId)}/ws`;
  }

  function oggUrl() {
    if (joined && joined.urls && joined.urls.ogg) return sameSchemeUrl(joined.urls.ogg);
    if (info && info.urls && info.urls.ogg) return sameSchemeUrl(info.urls.ogg);
    return `/live/${encodeURIComponent(spaceId)}.ogg`;
  }

  /** Fetches the space; returns "ok", "missing" or "error". */
  async function refreshInfo() {
    try {
      const res = await fetch(apiUrl, { cache: 'no-store' });
      if (res.status === 404) {
        info = null;
        levee.spaceState = null;
        ui.title.textContent = 'No such space';
        ui.state.textContent = 'not found';
        ui.state.className = 'badge ended';
        if (!wanted) setState('error', `There is no space “${spaceId}”.`, true);
        return 'missing';
      }
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      info = body;
      levee.spaceState = body.state;
      // The API's count is the fallback when no STATS arrive (not playing, or Ogg mode).
      if (levee.mode !== 'websocket' || performance.now() - lastStatsWall > 3000) {
        levee.listeners = body.listeners;
      }
      renderSpace();
      if (body.state === 'ended' && levee.state !== 'ended' && (!wanted || levee.mode === 'ogg')) {
        ended();
      } else if (!wanted && levee.state === 'idle') {
        ui.status.textContent = body.state === 'scheduled'
          ? `This space has not started yet${startText(body.scheduled_start)}. Press Play to wait for it.`
          : 'Press Play to listen live.';
      }
      renderButton();
      renderStats();
      return 'ok';
    } catch (e) {
      if (!wanted) setState(levee.state, `Could not load the space: ${e.message}`, true);
      return 'error';
    }
  }

  // ---------------------------------------------------------------- play / stop

  ui.play.addEventListener('click', () => {
    if (wanted) stop('Stopped.');
    else play();
  });

  ui.volume.addEventListener('input', () => {
    const v = Number(ui.volume.value);
    if (gain && ctx) gain.gain.setTargetAtTime(v, ctx.currentTime, 0.02);
    ui.audio.volume = v;
  });

  async function play() {
    wanted = true;
    attempt = 0;
    levee.lastSeq = null; // what was missed while stopped is not a gap
    latencyEma = null;
    renderButton();
    if (VIA === 'hls') {
      startHls('asked for with ?via=hls');
      return;
    }
    if (typeof AudioDecoder === 'undefined' || typeof AudioContext === 'undefined') {
      startFallback('This browser has no WebCodecs AudioDecoder');
      return;
    }
    // Created inside the click so that autoplay rules let it run.
    ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    gain = ctx.createGain();
    gain.gain.value = Number(ui.volume.value);
    gain.connect(ctx.destination);
    ctx.resume().catch(() => {});
    let supported = false;
    try {
      const r = await AudioDecoder.isConfigSupported({ codec: 'opus', sampleRate: 48000, numberOfChannels: 2 });
      supported = r.supported;
    } catch {
      supported = false;
    }
    if (!wanted) return;
    if (!supported) {
      closeContext();
      startFallback('This browser cannot decode Opus with WebCodecs');
      return;
    }
    levee.mode = 'websocket';
    connect();
  }

  function stop(message) {
    wanted = false;
    clearTimeout(retryTimer);
    cancelJoin('idle');
    closeSocket(1000, 'listener stopped');
    closeDecoder();
    closeContext();
    stopFallback();
    stopHls();
    setState('idle', message);
  }

  function ended() {
    wanted = false;
    clearTimeout(retryTimer);
    cancelJoin('ended');
    closeSocket(1000, '');
    closeDecoder();
    stopFallback();
    stopHls();
    levee.spaceState = 'ended';
    if (info) info.state = 'ended';
    renderSpace();
    // Let what is already scheduled play out, then release the audio device.
    if (ctx) {
      const c = ctx;
      const left = Math.max(0, playhead - c.currentTime);
      setTimeout(() => { if (ctx === c) closeContext(); }, left * 1000 + 200);
    }
    setState('ended', 'This space has ended.');
  }

  function closeSocket(code, reason) {
    if (!ws) return;
    const s = ws;
    ws = null;
    try { s.close(code, reason); } catch { /* already closing */ }
  }

  function closeDecoder() {
    if (decoder && decoder.state !== 'closed') {
      try { decoder.close(); } catch { /* closed by an error */ }
    }
    decoder = null;
    decoderHead = '';
    pending = [];
  }

  function closeContext() {
    for (const src of playing) {
      try { src.stop(); } catch { /* not started */ }
    }
    playing.clear();
    anchored = false;
    bursts = [];
    burstDur = 0;
    extraLead = 0;
    levee.bufferMs = null;
    if (ctx) ctx.close().catch(() => {});
    ctx = null;
    gain = null;
  }

  // ---------------------------------------------------------------- WebSocket

  /** Joins (a fresh ticket), then opens the WebSocket. */
  async function connect() {
    clearTimeout(retryTimer);
    if (!wanted) return;
    if (!await join()) return;
    setState(attempt ? 'reconnecting' : 'connecting', attempt ? 'Reconnecting…' : 'Connecting…');
    const sock = new WebSocket(wsUrl());
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      wsRefusedInARow = 0;
      setState('buffering', 'Connected; waiting for audio…');
    };
    sock.onmessage = (ev) => {
      if (ws !== sock || typeof ev.data === 'string') return;
      onMessage(ev.data);
    };
    let opened = false;
    sock.addEventListener('open', () => { opened = true; });
    sock.onclose = (ev) => {
      levee.lastClose = { code: ev.code, reason: ev.reason };
      if (!opened) wsRefusedInARow += 1;
      if (ws !== sock) return;
      ws = null;
      onClose(ev);
    };
  }

  function onClose(ev) {
    if (!wanted) return;
    if (ev.code === 1001 && /ended/i.test(ev.reason)) {
      ended();
      return;
    }
    const why = ev.reason ? `${ev.code}: ${ev.reason}` : `code ${ev.code}`;
    scheduleRetry(`Connection lost (${why}).`);
  }

  function scheduleRetry(message) {
    attempt += 1;
    levee.reconnects += 1;
    const base = Math.min(15000, 500 * 2 ** Math.min(attempt - 1, 5));
    const delay = Math.round(base * (0.5 + Math.random())); // jitter: many listeners, one outage
    setState('reconnecting', `${message} Retrying in ${(delay / 1000).toFixed(1)} s…`);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(async () => {
      if (!wanted) return;
      const r = await refreshInfo();
      if (!wanted) return;
      if (r === 'missing') {
        gone();
      } else if (levee.spaceState === 'ended') {
        ended();
      } else if (levee.mode === 'ogg') {
        playFallback();
      } else if (levee.mode === 'hls') {
        playHls();
      } else if (wsRefusedInARow >= WS_TRIES_BEFORE_HLS && hlsSupported()) {
        closeDecoder();
        closeContext();
        startHls('WebSockets do not get through here');
      } else {
        connect();
      }
    }, delay);
  }

  function onMessage(buf) {
    const dv = new DataView(buf);
    if (dv.byteLength < 1) return;
    switch (dv.getUint8(0)) {
      case KIND_HEAD:
        onHead(new Uint8Array(buf, 1));
        break;
      case KIND_AUDIO:
        if (dv.byteLength < 17) return;
        onAudio(Number(dv.getBigUint64(1)), Number(dv.getBigUint64(9)), new Uint8Array(buf, 17));
        break;
      case KIND_STATS:
        if (dv.byteLength < 13) return;
        onStats(Number(dv.getBigUint64(1)), dv.getUint32(9));
        break;
      case KIND_STAGE:
        if (dv.byteLength < 13) return;
        window.dispatchEvent(new CustomEvent('levee-stage', {
          detail: { revision: dv.getUint32(1), onStage: dv.getUint32(5), speaking: dv.getUint32(9) },
        }));
        break;
      default:
        break; // unknown kinds are for newer players
    }
  }

  function onHead(head) {
    if (head.length < 19) return;
    const channels = head[9] || 2;
    const key = Array.from(head, (b) => b.toString(16).padStart(2, '0')).join('');
    if (decoder && decoder.state === 'configured' && key === decoderHead) return;
    closeDecoder();
    levee.channels = channels;
    const config = { codec: 'opus', sampleRate: 48000, numberOfChannels: channels };
    // Mono and stereo (mapping family 0) need no description; more channels need the
    // OpusHead for their channel mapping.
    if (channels > 2) config.description = head.slice();
    const dec = new AudioDecoder({
      output: (data) => { if (decoder === dec) onDecoded(data); else data.close(); },
      error: (e) => {
        if (decoder !== dec) return;
        levee.decodeErrors += 1;
        decoder = null;
        decoderHead = '';
        pending = [];
        ui.status.textContent = `Decoder error: ${e.message}; restarting.`;
        // The next HEAD (sent again on reconnect) sets up a fresh decoder.
        closeSocket(1000, 'decoder error');
        if (wanted) scheduleRetry('The audio decoder failed.');
      },
    });
    try {
      dec.configure(config);
    } catch (e) {
      levee.decodeErrors += 1;
      setState('error', `Cannot decode this stream: ${e.message}`, true);
      return;
    }
    decoder = dec;
    decoderHead = key;
  }

  function onAudio(seq, captureUs, packet) {
    levee.framesReceived += 1;
    lastAudioWall = performance.now();
    attempt = 0;
    const last = levee.lastSeq;
    if (last !== null && seq > last + 1) levee.gaps += seq - last - 1;
    levee.lastSeq = seq;
    if (!decoder || decoder.state !== 'configured') {
      levee.framesDropped += 1;
      return;
    }
    if (decoder.decodeQueueSize > 50) { // the decoder cannot keep up: drop rather than queue
      levee.framesDropped += 1;
      return;
    }
    pending.push(captureUs);
    decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: captureUs, data: packet }));
  }

  function onStats(serverUs, listeners) {
    lastStatsWall = performance.now();
    levee.listeners = listeners;
    // server clock - browser clock, seen through a delay d >= 0: the largest recent sample is
    // the one least delayed.
    offsetSamples.push(serverUs / 1000 - Date.now());
    if (offsetSamples.length > OFFSET_WINDOW) offsetSamples.shift();
    levee.clockOffsetMs = Math.max(...offsetSamples);
  }

  // ---------------------------------------------------------------- playout

  function onDecoded(data) {
    levee.framesDecoded += 1;
    const captureUs = pending.length ? pending.shift() : null;
    if (!ctx || ctx.state === 'closed') {
      data.close();
      return;
    }
    if (ctx.state !== 'running') {
      // The audio device has not started yet: its clock stands still, so anchoring now would
      // put the buffer too far ahead. These first frames are dropped instead.
      levee.framesDropped += 1;
      data.close();
      return;
    }
    const frames = data.numberOfFrames;
    const channels = data.numberOfChannels;
    const buffer = ctx.createBuffer(channels, frames, data.sampleRate);
    for (let c = 0; c < channels; c += 1) {
      data.copyTo(buffer.getChannelData(c), { planeIndex: c, format: 'f32-planar' });
    }
    data.close();
    schedule(buffer, captureUs);
  }

  /** Largest burst of audio (seconds) that arrived at once recently: the server's chunk size. */
  function trackBurst(duration) {
    const wall = performance.now();
    if (wall - burstWall < 8) {
      burstDur += duration;
    } else {
      if (burstDur > 0) {
        bursts.push(burstDur);
        if (bursts.length > 16) bursts.shift();
      }
      burstDur = duration;
    }
    burstWall = wall;
    return Math.max(burstDur, ...bursts);
  }

  function schedule(buffer, captureUs) {
    const now = ctx.currentTime;
    const wall = performance.now();
    const chunk = trackBurst(buffer.duration);
    if (extraLead > 0 && wall - extraLeadSince > 20000) { // no underrun for a while: shrink
      extraLead = Math.max(0, extraLead - 0.02);
      extraLeadSince = wall;
    }
    const target = Math.max(TARGET_LEAD_S, chunk + LEAD_OVER_CHUNK_S) + extraLead;
    levee.targetMs = Math.round(target * 1000);
    levee.burstMs = Math.round(chunk * 1000);
    const lead = playhead - now;
    if (!anchored || lead < UNDERRUN_MARGIN_S) {
      if (anchored) {
        levee.underruns += 1;
        extraLead = Math.min(MAX_EXTRA_LEAD_S, extraLead + 0.04);
        extraLeadSince = wall;
      }
      playhead = now + target;
      anchored = true;
    } else if (lead > target + chunk + DRIFT_MARGIN_S) {
      // Too far behind live (clock drift or a burst after a stall): jump back to the target.
      levee.reanchors += 1;
      for (const src of playing) {
        try { src.stop(); } catch { /* not started */ }
      }
      playing.clear();
      playhead = now + target;
    }
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(gain);
    src.onended = () => playing.delete(src);
    src.start(playhead);
    playing.add(src);
    levee.framesScheduled += 1;

    if (captureUs !== null) {
      const outMs = ((ctx.outputLatency || 0) + (ctx.baseLatency || 0)) * 1000;
      const offset = levee.clockOffsetMs ?? 0;
      const ms = Date.now() + offset - captureUs / 1000 + (playhead - now) * 1000 + outMs;
      if (Number.isFinite(ms)) {
        latencyEma = latencyEma === null || Math.abs(ms - latencyEma) > 1000
          ? ms
          : latencyEma + 0.05 * (ms - latencyEma);
        levee.latencyMs = Math.round(latencyEma);
      }
    }
    playhead += buffer.duration;

    if (levee.state !== 'playing' && wanted) setState('playing', 'Playing live.');
  }

  // ---------------------------------------------------------------- LL-HLS (Media Source)
  //
  // The space's LL-HLS (docs/protocol.md, "Low-Latency HLS") played through Media Source:
  // the init segment, then part after part from three parts behind the live edge (the
  // playlist's PART-HOLD-BACK). levee holds a request for the next part until it is sealed,
  // so the loop asks for each part as soon as the previous one is in; after the last part of
  // a segment (the playlist shows how many a segment has) comes the next segment's first part.
  // Anything else missing
  // (fell behind, the source was away) goes back to the live edge through the playlist.

  const HLS_TYPE = 'audio/mp4; codecs="opus"';
  const HLS_START_PARTS = 3;      // parts behind the live edge to start from
  const HLS_KEEP_S = 30;          // audio kept in the buffer behind the playhead
  const WS_TRIES_BEFORE_HLS = 3;  // WebSockets that never opened, in a row, before trying HLS
  let wsRefusedInARow = 0;
  let hlsGen = 0;                 // bumped by every start and stop: an older loop ends itself

  function hlsSupported() {
    return typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(HLS_TYPE);
  }

  function hlsUrl(name) {
    return `/live/${encodeURIComponent(spaceId)}/hls/${name}`;
  }

  /** [msn, part] of the part `back` parts before the playlist's preload hint. */
  function hlsStart(playlist, back) {
    const uris = [...playlist.matchAll(/#EXT-X-PART:[^\n]*URI="p(\d+)\.(\d+)\.m4s"/g)]
      .map((m) => [Number(m[1]), Number(m[2])]);
    const hint = /#EXT-X-PRELOAD-HINT:[^\n]*URI="p(\d+)\.(\d+)\.m4s"/.exec(playlist);
    if (uris.length) return uris[Math.max(0, uris.length - back)];
    return hint ? [Number(hint[1]), Number(hint[2])] : null;
  }

  /** Parts per segment, from the parts the playlist lists before a whole segment (4). */
  function hlsPartsPerSegment(playlist) {
    let run = 0;
    let most = 0;
    for (const line of playlist.split('\n')) {
      if (line.startsWith('#EXT-X-PART:')) run += 1;
      else if (line.startsWith('#EXTINF:')) { most = Math.max(most, run); run = 0; }
    }
    return most || 4;
  }

  function startHls(why) {
    if (!hlsSupported()) {
      startFallback(`${why}, and this browser cannot play LL-HLS`);
      return;
    }
    levee.mode = 'hls';
    ui.audio.onplaying = () => { if (wanted) setState('playing', `Playing live (${why}; LL-HLS).`); };
    ui.audio.onwaiting = () => { if (wanted) setState('buffering', 'Buffering…'); };
    ui.audio.onerror = null;
    ui.audio.onended = null;
    playHls();
  }

  async function playHls() {
    if (!wanted) return;
    if (!await join()) return;
    const gen = ++hlsGen;
    const live = () => gen === hlsGen && wanted;
    setState('connecting', 'Connecting…');
    const ms = new MediaSource();
    ui.audio.volume = Number(ui.volume.value);
    ui.audio.src = URL.createObjectURL(ms);
    ui.audio.play().catch((e) => {
      if (wanted && e.name === 'NotAllowedError') stop('The browser blocked playback; press Play again.');
    });
    try {
      await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
      const sb = ms.addSourceBuffer(HLS_TYPE);
      const done = (start) => new Promise((resolve, reject) => {
        const ok = () => { sb.removeEventListener('error', bad); resolve(); };
        const bad = () => { sb.removeEventListener('updateend', ok); reject(new Error('the audio buffer refused a part')); };
        sb.addEventListener('updateend', ok, { once: true });
        sb.addEventListener('error', bad, { once: true });
        start();
      });
      const get = (name) => fetch(hlsUrl(name));
      const append = (bytes) => done(() => sb.appendBuffer(bytes));
      const init = await get('init.mp4');
      if (init.status === 403) {
        // HLS carries open spaces only: this one needs a ticket, which the Ogg stream takes.
        stopHls();
        startFallback('this space needs a ticket, which LL-HLS cannot carry');
        return;
      }
      if (!init.ok) throw new Error(`init.mp4 answered ${init.status}`);
      await append(await init.arrayBuffer());
      const first = await get('index.m3u8');
      if (!first.ok) throw new Error(`the playlist answered ${first.status}`);
      const text = await first.text();
      let perSegment = hlsPartsPerSegment(text);
      let at = hlsStart(text, HLS_START_PARTS);
      while (live()) {
        if (!at) {
          // Nothing on air yet: wait (bounded by the server) for the first part.
          const r = await get('index.m3u8?_HLS_msn=0');
          if (!live()) break;
          at = r.ok ? hlsStart(await r.text(), HLS_START_PARTS) : null;
          if (!at) await new Promise((res) => setTimeout(res, 1000));
          continue;
        }
        const [msn, part] = at;
        const r = await get(`p${msn}.${part}.m4s`);
        if (!live()) break;
        if (r.ok) {
          await append(await r.arrayBuffer());
          levee.hlsParts += 1;
          if (levee.hlsParts === 1 && sb.buffered.length && ui.audio.currentTime < sb.buffered.start(0)) {
            // The stream's timeline starts where the space is, not at 0.
            ui.audio.currentTime = sb.buffered.start(0);
          }
          const now = ui.audio.currentTime;
          if (sb.buffered.length && now - sb.buffered.start(0) > HLS_KEEP_S + 10) {
            await done(() => sb.remove(0, now - HLS_KEEP_S));
          }
          at = part + 1 < perSegment ? [msn, part + 1] : [msn + 1, 0];
        } else if (r.status === 410 && part > 0) {
          // Past the last part of its segment (fewer parts than thought).
          perSegment = part;
          at = [msn + 1, 0];
        } else if (r.status === 404 || r.status === 410) {
          const pl = await get(`index.m3u8?_HLS_msn=${msn}`);
          if (!live()) break;
          const text = pl.ok ? await pl.text() : '';
          if (text.includes('#EXT-X-ENDLIST')) {
            if (ms.readyState === 'open') ms.endOfStream();
            break;
          }
          at = hlsStart(text, HLS_START_PARTS);
        } else {
          throw new Error(`p${msn}.${part}.m4s answered ${r.status}`);
        }
      }
    } catch (e) {
      if (live()) scheduleRetry(`The HLS stream stopped (${e.message}).`);
    }
  }

  function stopHls() {
    hlsGen += 1;
    if (levee.mode !== 'hls') return;
    ui.audio.onplaying = ui.audio.onwaiting = null;
    ui.audio.pause();
    ui.audio.removeAttribute('src');
    ui.audio.load();
  }

  // ---------------------------------------------------------------- <audio> fallback

  function startFallback(why) {
    levee.mode = 'ogg';
    ui.audio.onplaying = () => { if (wanted) setState('playing', `Playing live (${why}; using the Ogg stream).`); };
    ui.audio.onwaiting = () => { if (wanted) setState('buffering', 'Buffering…'); };
    ui.audio.onerror = () => { if (wanted) scheduleRetry('The stream stopped.'); };
    ui.audio.onended = () => { if (wanted) scheduleRetry('The stream stopped.'); };
    playFallback();
  }

  async function playFallback() {
    if (!wanted) return;
    if (!await join()) return;
    setState('connecting', 'Connecting…');
    ui.audio.volume = Number(ui.volume.value);
    ui.audio.src = oggUrl();
    ui.audio.play().catch((e) => {
      if (wanted && e.name === 'NotAllowedError') stop('The browser blocked playback; press Play again.');
    });
  }

  function stopFallback() {
    if (levee.mode !== 'ogg') return;
    ui.audio.onplaying = ui.audio.onwaiting = ui.audio.onerror = ui.audio.onended = null;
    ui.audio.pause();
    ui.audio.removeAttribute('src');
    ui.audio.load();
  }

  // ---------------------------------------------------------------- joining

  const joinUrl = `${apiUrl}/join`;
  const MAX_BACKOFF_MS = 60000;
  const numberFormat = new Intl.NumberFormat();

  let joined = null;      // the last admission: { ticket, urls, access, expiresAt }
  let joinGen = 0;        // bumped by every join and by stop: an older join loop ends itself
  let joinWake = null;    // ends the current pause early (stop)
  let powWorkers = [];    // proof-of-work workers while a challenge is being solved
  let line = null;        // what the line box shows (see renderLine)

  function startText(unixS) {
    if (!Number.isFinite(unixS) || unixS <= 0) return '';
    const d = new Date(unixS * 1000);
    const sameDay = d.toDateString() === new Date().toDateString();
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return sameDay ? ` (it starts at ${time})` : ` (it starts ${d.toLocaleDateString()} at ${time})`;
  }

  /** "40 s", "3 min 5 s", "2 h 05 min". */
  function duration(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
  }

  /** `ms` ± `frac` at random. */
  const jitter = (ms, frac) => Math.round(ms * (1 - frac + 2 * frac * Math.random()));

  /** Waits `ms` unless this join is cancelled first; resolves true if it should go on. */
  function pause(gen, ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (joinWake === done) joinWake = null;
        resolve(gen === joinGen && wanted);
      };
      const timer = setTimeout(done, Math.max(0, ms));
      joinWake = done;
    });
  }

  function cancelJoin(state) {
    joinGen += 1;
    if (joinWake) joinWake();
    for (const w of powWorkers) w.terminate();
    powWorkers = [];
    line = null;
    levee.joinState = state;
    levee.retryInMs = null;
    renderLine();
  }

  function showLine(next) {
    line = next;
    renderLine();
  }

  function renderLine() {
    if (!line) {
      ui.lineBox.hidden = true;
      ui.lineBox.className = 'line-box';
      return;
    }
    const now = performance.now();
    ui.lineBox.hidden = false;
    ui.lineBox.className = `line-box ${line.kind}`;
    let progress = null;   // 0..1, or null for "unknown"
    let showBar = true;
    if (line.kind === 'queued') {
      const left = line.etaAt - now;
      const number = numberFormat.format(line.position);
      ui.lineText.textContent = left > 500
        ? `You are number ${number} — about ${duration(left)}`
        : `You are number ${number} — any moment now`;
      const waited = now - line.since;
      progress = waited / Math.max(1, waited + Math.max(0, left));
      const next = line.nextAt - now;
      const check = next > 0 ? `Next check in ${duration(next)}.` : 'Checking…';
      ui.lineHint.textContent = line.preQueue
        ? `The line opens before the start and is drawn by lot at the start: arriving early or ` +
          `late makes no difference. ${check}`
        : check;
    } else if (line.kind === 'challenge') {
      ui.lineText.textContent = `Checking your browser… (difficulty ${line.difficulty})`;
      const expected = 2 ** line.difficulty;
      progress = line.tried < expected ? line.tried / expected : null;
      ui.lineHint.textContent = line.tried
        ? `${numberFormat.format(line.tried)} hashes tried, about ${numberFormat.format(expected)} expected. ` +
          'This small proof of work keeps floods of fake listeners out.'
        : 'This small proof of work keeps floods of fake listeners out.';
    } else { // refused or retrying: a message and a countdown
      const left = Math.max(0, line.retryAt - now);
      levee.retryInMs = Math.round(left);
      ui.lineText.textContent = line.message;
      ui.lineHint.textContent = left > 0 ? `Trying again in ${duration(left)}.` : 'Trying again…';
      showBar = false;
    }
    ui.lineProgress.hidden = !showBar;
    if (showBar) {
      if (progress === null) ui.lineProgress.removeAttribute('value');
      else ui.lineProgress.value = Math.min(1, Math.max(0, progress));
    }
  }

  /** When the server says to come back: `retry_after_ms` in the body, else `Retry-After`. */
  function retryAfterMs(res, body) {
    if (body && Number.isFinite(body.retry_after_ms)) return body.retry_after_ms;
    const h = Number(res.headers.get('Retry-After'));
    return Number.isFinite(h) && h >= 0 ? h * 1000 : null;
  }

  /**
   * Solves a challenge in Web Workers (one per core, up to four, each searching its own range
   * of nonces); resolves { nonce, tried, ms, engine } or null if cancelled.
   */
  function solve(gen, challenge) {
    const count = Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const tried = [];
      let settled = false;
      const total = () => tried.reduce((a, b) => a + b, 0);
      const settle = (fn, value) => {
        if (settled) return;
        settled = true;
        for (const w of powWorkers) w.terminate();
        powWorkers = [];
        if (joinWake === cancelled) joinWake = null;
        fn(value);
      };
      // Cancelled (stop): cancelJoin wakes this up and the workers are terminated.
      const cancelled = () => settle(resolve, null);
      joinWake = cancelled;
      for (let k = 0; k < count; k += 1) {
        let worker;
        try {
          worker = new Worker('/assets/pow-worker.js');
        } catch (e) {
          if (k === 0) settle(reject, new Error(`cannot start the proof-of-work worker: ${e.message}`));
          break;
        }
        powWorkers.push(worker);
        tried.push(0);
        worker.onmessage = (ev) => {
          const m = ev.data || {};
          if (settled) return;
          if (gen !== joinGen) { settle(resolve, null); return; }
          if (m.type === 'progress') {
            tried[k] = m.tried;
            if (line && line.kind === 'challenge') {
              line.tried = total();
              renderLine();
            }
          } else if (m.type === 'done') {
            tried[k] = m.tried;
            settle(resolve, { nonce: m.nonce, tried: total(), ms: performance.now() - t0, engine: m.engine, workers: count });
          } else if (m.type === 'error') {
            settle(reject, new Error(m.message || 'the proof-of-work worker failed'));
          }
        };
        worker.onerror = (e) => {
          e.preventDefault();
          settle(reject, new Error(e.message || 'the proof-of-work worker failed'));
        };
        // Disjoint ranges: 2^40 nonces each is more than any difficulty needs.
        worker.postMessage({ seed: challenge.seed, difficulty: challenge.difficulty, start: k * 2 ** 40 });
      }
    });
  }

  /** The space is gone (404). */
  function gone() {
    wanted = false;
    cancelJoin('error');
    closeContext();
    stopFallback();
    setState('error', `There is no space “${spaceId}” any more.`, true);
  }

  /**
   * Asks the join API until admitted. Resolves true with `joined` set (the caller opens the
   * stream), or false if the listener stopped, the space ended or is gone meanwhile.
   */
  async function join() {
    cancelJoin('joining');
    const gen = joinGen;
    const alive = () => gen === joinGen && wanted;
    let body = {};
    let refusals = 0;      // consecutive refusals/failures: the backoff grows with them
    let badPows = 0;
    let queuedSince = null;
    joined = null;
    setState(levee.state === 'reconnecting' ? 'reconnecting' : 'connecting', 'Joining…');

    // A refusal or failure: say so honestly, count down, come back after a jittered backoff.
    const backOff = async (joinState, message, serverMs) => {
      refusals += 1;
      const own = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(refusals - 1, 6));
      const ms = jitter(Math.min(MAX_BACKOFF_MS * 5, Math.max(serverMs ?? 0, own)), 0.2);
      levee.joinState = joinState;
      showLine({ kind: 'refused', message, retryAt: performance.now() + ms });
      ui.status.textContent = `${message} This page tries again by itself.`;
      return pause(gen, ms);
    };

    while (alive()) {
      let res;
      let answer = {};
      try {
        levee.joins += 1;
        res = await fetch(joinUrl, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
          cache: 'no-store',
        });
        answer = await res.json().catch(() => ({}));
      } catch (e) {
        if (!alive()) return false;
        if (!await backOff('retrying', `Could not reach the server (${e.message}).`)) return false;
        continue;
      }
      if (!alive()) return false;
      const serverMs = retryAfterMs(res, answer);
      switch (res.status) {
        case 200: {
          if (!answer.urls || !answer.urls.ws) {
            if (!await backOff('retrying', 'The server admitted this page without stream addresses.')) return false;
            body = {};
            continue;
          }
          joined = {
            ticket: answer.ticket,
            urls: answer.urls,
            access: answer.access,
            expiresAt: Date.now() + (answer.expires_in_s || 60) * 1000,
          };
          levee.admissions += 1;
          levee.access = answer.access || null;
          levee.queuedMs = queuedSince === null ? 0 : Math.round(performance.now() - queuedSince);
          levee.queuePosition = null;
          levee.queueEtaMs = null;
          levee.retryInMs = null;
          levee.joinState = 'admitted';
          line = null;
          renderLine();
          renderOggLink();
          return true;
        }
        case 202: {
          const q = answer.queue;
          if (!q || typeof q.token !== 'string') {
            if (!await backOff('retrying', 'The server put this page in line without a token.', serverMs)) return false;
            body = {};
            continue;
          }
          refusals = 0;
          const now = performance.now();
          if (queuedSince === null) {
            queuedSince = now;
            levee.queueFirstPosition = q.position + 1;
          }
          levee.joinState = 'queued';
          levee.queuePosition = q.position + 1;  // callers ahead + 1: "you are number 1" is next
          levee.queueEtaMs = q.eta_ms;
          const preQueue = Boolean(info && info.scheduled_start && info.scheduled_start * 1000 > Date.now());
          // The server's advice is already jittered ±25 %; ours on top spreads a herd further.
          const wait = Math.max(250, jitter(Number.isFinite(q.retry_after_ms) ? q.retry_after_ms : (serverMs ?? 2000), 0.1));
          showLine({
            kind: 'queued',
            position: levee.queuePosition,
            etaAt: now + (q.eta_ms || 0),
            nextAt: now + wait,
            since: queuedSince,
            preQueue,
          });
          // Said once (the status line is read out): the box above counts down quietly.
          ui.status.textContent = 'Waiting in line. You will join by yourself when it is your turn; keep this page open.';
          body = { queue_token: q.token };
          if (!await pause(gen, wait)) return false;
          continue;
        }
        case 401: {
          const c = answer.challenge;
          if (!c || typeof c.seed !== 'string' || !Number.isInteger(c.difficulty)) {
            if (!await backOff('retrying', `The server refused this page (${answer.error || 'no challenge'}).`, serverMs)) return false;
            body = {};
            continue;
          }
          if (body.pow) badPows += 1; // the last solution was refused (used, expired, too easy)
          if (badPows >= 3) {
            badPows = 0;
            if (!await backOff('retrying', `The server keeps refusing this browser’s proof of work (${answer.error || 'refused'}).`)) return false;
            body = {}; // that challenge has aged: ask for a fresh one
            continue;
          }
          levee.joinState = 'challenge';
          levee.powDifficulty = c.difficulty;
          showLine({ kind: 'challenge', difficulty: c.difficulty, tried: 0 });
          ui.status.textContent = 'This space asks browsers for a small proof of work before they join. It takes a moment.';
          let solved;
          try {
            solved = await solve(gen, c);
          } catch (e) {
            if (!alive()) return false;
            if (!await backOff('retrying', `Could not check this browser: ${e.message}.`)) return false;
            body = {};
            continue;
          }
          if (!solved || !alive()) return false;
          levee.powMs = Math.round(solved.ms);
          levee.powHashes = solved.tried;
          levee.powEngine = solved.engine || null;
          levee.powWorkers = solved.workers || 1;
          body = { pow: { seed: c.seed, nonce: solved.nonce } };
          ui.status.textContent = 'Checked; joining…';
          continue;
        }
        case 429:
          if (!await backOff('limited', 'Too many join requests are coming from your network right now.', serverMs)) return false;
          continue;
        case 403:
          if (Number.isFinite(answer.retry_after_ms)) {
            if (!await backOff('banned', 'Your network is blocked from joining for a while.', serverMs)) return false;
          } else {
            // A queue token refused (expired, for instance): start again at the back of the line.
            body = {};
            queuedSince = null;
            if (!await backOff('retrying', `The server refused this page’s place in line (${answer.error || 'forbidden'}).`, 1000)) return false;
          }
          continue;
        case 503:
          if (!await backOff('full', 'The line for this space is full.', serverMs)) return false;
          continue;
        case 410:
          ended();
          return false;
        case 404:
          gone();
          return false;
        default:
          // A bad request (an old token format, say) or a server error: start over, slowly.
          body = {};
          if (!await backOff('retrying', `The server answered ${res.status}${answer.error ? `: ${answer.error}` : ''}.`, serverMs)) return false;
          continue;
      }
    }
    return false;
  }

  // ---------------------------------------------------------------- timers

  setInterval(() => {
    if (wanted && levee.mode === 'websocket' && levee.state === 'playing' &&
        performance.now() - lastAudioWall > STALL_MS) {
      setState('waiting', 'No audio from the host right now; staying connected.');
    }
    renderLine();
    renderStats();
  }, 250);

  setInterval(() => { if (!document.hidden || wanted) refreshInfo(); }, INFO_REFRESH_MS);

  if (!spaceId) {
    setState('error', 'No space id in this address.', true);
  } else {
    refreshInfo();
  }
  renderButton();
})();
