// levee space page: live playback over WebSocket + WebCodecs AudioDecoder, with a small adaptive
// playout buffer on an AudioContext. Falls back to the progressive Ogg/Opus stream in an
// <audio> element where WebCodecs cannot decode Opus.
//
// Wire format (docs/protocol.md): binary messages, first byte = kind, integers big-endian.
//   0x01 HEAD  + 19-byte OpusHead
//   0x02 AUDIO + seq u64 + capture time u64 (µs since epoch) + one Opus packet
//   0x03 STATS + server time u64 (µs since epoch) + listeners u32
'use strict';

(() => {
  const KIND_HEAD = 0x01;
  const KIND_AUDIO = 0x02;
  const KIND_STATS = 0x03;

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
  };

  const parts = location.pathname.split('/').filter(Boolean); // ["space", id, ...]
  const spaceId = decodeURIComponent(parts[1] || '');
  const apiUrl = `/api/spaces/${encodeURIComponent(spaceId)}`;

  // Numbers exposed for tests and curious people.
  const levee = {
    state: 'idle',          // idle | connecting | buffering | playing | waiting | reconnecting | ended | error
    spaceState: null,       // scheduled | live | ended, from the API
    mode: null,             // "websocket" (WebCodecs) or "ogg" (<audio> fallback)
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
  };
  Object.defineProperty(levee, 'playbackClock', {
    enumerable: true,
    get() {
      if (ctx) return ctx.currentTime;
      if (levee.mode === 'ogg') return ui.audio.currentTime;
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
    if (info.urls && info.urls.ogg) ui.oggLink.href = sameSchemeUrl(info.urls.ogg);
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
    ui.mode.textContent = levee.mode === 'websocket'
      ? 'WebSocket + WebCodecs'
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
    if (info && info.urls && info.urls.ws) return sameSchemeUrl(info.urls.ws);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/live/${encodeURIComponent(spaceId)}/ws`;
  }

  function oggUrl() {
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
          ? 'This space has not started yet. Press Play to wait for it.'
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
    closeSocket(1000, 'listener stopped');
    closeDecoder();
    closeContext();
    stopFallback();
    setState('idle', message);
  }

  function ended() {
    wanted = false;
    clearTimeout(retryTimer);
    closeSocket(1000, '');
    closeDecoder();
    stopFallback();
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

  function connect() {
    clearTimeout(retryTimer);
    if (!wanted) return;
    setState(attempt ? 'reconnecting' : 'connecting', attempt ? 'Reconnecting…' : 'Connecting…');
    const sock = new WebSocket(wsUrl());
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      setState('buffering', 'Connected; waiting for audio…');
    };
    sock.onmessage = (ev) => {
      if (ws !== sock || typeof ev.data === 'string') return;
      onMessage(ev.data);
    };
    sock.onclose = (ev) => {
      levee.lastClose = { code: ev.code, reason: ev.reason };
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
        wanted = false;
        closeContext();
        stopFallback();
        setState('error', `There is no space “${spaceId}” any more.`, true);
      } else if (levee.spaceState === 'ended') {
        ended();
      } else if (levee.mode === 'ogg') {
        playFallback();
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

  // ---------------------------------------------------------------- <audio> fallback

  function startFallback(why) {
    levee.mode = 'ogg';
    ui.audio.onplaying = () => { if (wanted) setState('playing', `Playing live (${why}; using the Ogg stream).`); };
    ui.audio.onwaiting = () => { if (wanted) setState('buffering', 'Buffering…'); };
    ui.audio.onerror = () => { if (wanted) scheduleRetry('The stream stopped.'); };
    ui.audio.onended = () => { if (wanted) scheduleRetry('The stream stopped.'); };
    playFallback();
  }

  function playFallback() {
    if (!wanted) return;
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

  // ---------------------------------------------------------------- timers

  setInterval(() => {
    if (wanted && levee.mode === 'websocket' && levee.state === 'playing' &&
        performance.now() - lastAudioWall > STALL_MS) {
      setState('waiting', 'No audio from the host right now; staying connected.');
    }
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
