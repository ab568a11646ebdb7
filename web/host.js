// levee host page: microphone → WebCodecs AudioEncoder (Opus) → WebSocket publish.
//
// The publish socket (docs/protocol.md): first a text message {"key": "<host key>"}; the server
// answers {"type":"ready"}; then binary AUDIO messages: 0x02 + seq u64 + capture time u64
// (µs since epoch) + one Opus packet, big-endian.
'use strict';

(() => {
  const KIND_AUDIO = 0x02;
  const MAX_MESSAGE = 8 * 1024;       // the server's limit for one host message
  const MAX_BUFFERED = 64 * 1024;     // socket backlog beyond which packets are dropped
  const READY_TIMEOUT_MS = 10000;
  const INFO_REFRESH_MS = 3000;
  const BASE_WINDOW_MS = 5000;        // capture-clock → wall-clock mapping window

  const $ = (id) => document.getElementById(id);
  const ui = {
    title: $('space-title'),
    spaceState: $('space-state'),
    key: $('host-key'),
    showKey: $('show-key'),
    goLive: $('go-live'),
    stop: $('stop'),
    status: $('status'),
    meter: $('meter'),
    meterFill: $('meter-fill'),
    meterDb: $('meter-db'),
    state: $('stat-state'),
    sent: $('stat-sent'),
    kbytes: $('stat-kbytes'),
    listeners: $('stat-listeners'),
    dropped: $('stat-dropped'),
    reconnects: $('stat-reconnects'),
    capture: $('stat-capture'),
    spaceLink: $('space-link'),
    speakLink: $('speak-link'),
    sourceUrl: $('source-url'),
    endSpace: $('end-space'),
  };

  const parts = location.pathname.split('/').filter(Boolean); // ["space", id, "host"]
  const spaceId = decodeURIComponent(parts[1] || '');
  const apiUrl = `/api/spaces/${encodeURIComponent(spaceId)}`;

  const leveeHost = {
    state: 'idle',   // idle | starting | connecting | live | reconnecting | stopped | ended | error
    packetsSent: 0,
    bytesSent: 0,
    dropped: 0,
    level: 0,        // RMS of the microphone signal, 0..1
    reconnects: 0,
    capture: null,   // "MediaStreamTrackProcessor" or "AudioWorklet"
    encoderErrors: 0,
    listeners: null,
    lastClose: null,
  };
  window.leveeHost = leveeHost;

  let info = null;
  let wanted = false;
  let key = '';
  let ctx = null;
  let stream = null;
  let analyser = null;
  let levelBuf = null;
  let reader = null;
  let worklet = null;
  let encoder = null;
  let ws = null;
  let ready = false;
  let readyTimer = 0;
  let retryTimer = 0;
  let attempt = 0;
  let seq = 0;
  let captureBase = null;      // wall-clock µs minus capture-clock µs
  let baseWindowMin = Infinity;
  let baseWindowStart = 0;
  let workletSamples = 0;

  // ---------------------------------------------------------------- UI

  function setState(state, message, isError = false) {
    leveeHost.state = state;
    if (message !== undefined) {
      ui.status.textContent = message;
      ui.status.classList.toggle('error', isError);
    }
    render();
  }

  function render() {
    const ended = info && info.state === 'ended';
    ui.goLive.disabled = wanted || !info || ended;
    ui.stop.disabled = !wanted;
    ui.key.disabled = wanted;
    ui.endSpace.disabled = !info || ended;
    ui.state.textContent = leveeHost.state;
    ui.sent.textContent = String(leveeHost.packetsSent);
    ui.kbytes.textContent = (leveeHost.bytesSent / 1024).toFixed(1);
    ui.dropped.textContent = String(leveeHost.dropped);
    ui.reconnects.textContent = String(leveeHost.reconnects);
    ui.listeners.textContent = leveeHost.listeners === null ? '–' : String(leveeHost.listeners);
    ui.capture.textContent = leveeHost.capture || '–';
  }

  function renderSpace() {
    if (!info) return;
    ui.title.textContent = info.title || info.id;
    document.title = `Host: ${info.title || info.id} · levee`;
    ui.spaceState.textContent = info.state;
    ui.spaceState.className = `badge ${info.state}`;
    ui.spaceLink.href = `/space/${encodeURIComponent(info.id)}`;
    // The speaker page takes the host key as well (WHIP); the key stays in the fragment.
    ui.speakLink.href = `/space/${encodeURIComponent(info.id)}/speak#key=${encodeURIComponent(ui.key.value)}`;
    renderSourceUrl();
  }

  function renderSourceUrl() {
    // The key itself is not shown: it is in the field above.
    ui.sourceUrl.textContent =
      `icecast://source:<host key>@${location.host}/live/${encodeURIComponent(spaceId)}.ogg`;
  }

  const fromHash = new URLSearchParams(location.hash.slice(1)).get('key');
  if (fromHash) ui.key.value = fromHash;

  ui.showKey.addEventListener('click', () => {
    const show = ui.key.type === 'password';
    ui.key.type = show ? 'text' : 'password';
    ui.showKey.textContent = show ? 'Hide' : 'Show';
    ui.showKey.setAttribute('aria-pressed', String(show));
  });

  // ---------------------------------------------------------------- space info

  async function refreshInfo() {
    try {
      const res = await fetch(apiUrl, { cache: 'no-store' });
      if (res.status === 404) {
        info = null;
        ui.title.textContent = 'No such space';
        ui.spaceState.textContent = 'not found';
        ui.spaceState.className = 'badge ended';
        if (!wanted) setState('error', `There is no space “${spaceId}”.`, true);
        return;
      }
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      info = body;
      leveeHost.listeners = body.listeners;
      renderSpace();
      if (body.state === 'ended' && leveeHost.state !== 'ended') {
        finish('ended', 'This space has ended.');
      }
      render();
    } catch (e) {
      if (!wanted) setState(leveeHost.state, `Could not load the space: ${e.message}`, true);
    }
  }

  function publishUrl() {
    let url = info && info.urls && info.urls.publish;
    if (!url) {
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      url = `${scheme}//${location.host}/live/${encodeURIComponent(spaceId)}/publish`;
    } else if (location.protocol === 'https:' && url.startsWith('ws:')) {
      url = `wss:${url.slice(3)}`;
    }
    return url;
  }

  // ---------------------------------------------------------------- go live / stop

  ui.goLive.addEventListener('click', () => { goLive(); });
  ui.stop.addEventListener('click', () => finish('stopped', 'Stopped. Press Go live to start again.'));
  ui.key.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && !wanted) goLive(); });

  async function encoderConfig() {
    const base = { codec: 'opus', sampleRate: 48000, numberOfChannels: 1, bitrate: 32000 };
    const candidates = [{ ...base, opus: { frameDuration: 20000 } }, base];
    for (const config of candidates) {
      try {
        const r = await AudioEncoder.isConfigSupported(config);
        if (r.supported) return config;
      } catch { /* try the next */ }
    }
    return null;
  }

  async function goLive() {
    key = ui.key.value.trim();
    if (!key) {
      setState('idle', 'Enter the host key first.', true);
      ui.key.focus();
      return;
    }
    if (typeof AudioEncoder === 'undefined' || typeof AudioData === 'undefined') {
      setState('error', 'This browser has no WebCodecs AudioEncoder. Publish with ffmpeg instead (see below).', true);
      return;
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setState('error', 'Microphone capture needs a secure page (https or localhost).', true);
      return;
    }
    wanted = true;
    attempt = 0;
    setState('starting', 'Asking for the microphone…');
    // Created inside the click so that it may run.
    ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    ctx.resume().catch(() => {});
    try {
      const config = await encoderConfig();
      if (!config) throw new Error('this browser cannot encode Opus with WebCodecs');
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      if (!wanted) return release();
      const track = stream.getAudioTracks()[0];
      if (!track) throw new Error('no audio track');
      track.addEventListener('ended', () => {
        if (wanted) finish('error', 'The microphone stopped.', true);
      });

      const source = ctx.createMediaStreamSource(stream);
      analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      levelBuf = new Float32Array(analyser.fftSize);
      source.connect(analyser);

      encoder = new AudioEncoder({
        output: onChunk,
        error: (e) => {
          leveeHost.encoderErrors += 1;
          if (wanted) finish('error', `The encoder failed: ${e.message}`, true);
        },
      });
      encoder.configure(config);

      const settings = track.getSettings ? track.getSettings() : {};
      if (typeof MediaStreamTrackProcessor === 'function' &&
          (settings.sampleRate === undefined || settings.sampleRate === 48000)) {
        startTrackProcessor(track);
      } else {
        await startWorklet(source);
      }
      if (!wanted) return undefined;
      connect();
    } catch (e) {
      if (wanted) {
        const why = e && e.name === 'NotAllowedError' ? 'microphone permission was denied' : (e.message || String(e));
        finish('error', `Could not go live: ${why}.`, true);
      }
    }
    return undefined;
  }

  /** Stops everything; `state` is the final state shown. */
  function finish(state, message, isError = false) {
    wanted = false;
    clearTimeout(retryTimer);
    clearTimeout(readyTimer);
    if (ws) {
      const s = ws;
      ws = null;
      try { s.close(1000, 'host stopped'); } catch { /* closing */ }
    }
    ready = false;
    release();
    if (state === 'ended' && info) {
      info.state = 'ended';
      renderSpace();
    }
    setState(state, message, isError);
  }

  function release() {
    if (reader) {
      reader.cancel().catch(() => {});
      reader = null;
    }
    if (worklet) {
      worklet.port.postMessage('stop');
      worklet.port.onmessage = null;
      worklet.disconnect();
      worklet = null;
    }
    if (encoder && encoder.state !== 'closed') {
      try { encoder.close(); } catch { /* closed */ }
    }
    encoder = null;
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
    analyser = null;
    if (ctx) ctx.close().catch(() => {});
    ctx = null;
    leveeHost.level = 0;
    drawLevel(0);
  }

  // ---------------------------------------------------------------- capture

  /** Maps capture timestamps to wall-clock time: the least-delayed frame of a window wins. */
  function noteFrame(timestampUs, durationUs) {
    const candidate = Date.now() * 1000 - (timestampUs + durationUs);
    const now = performance.now();
    if (captureBase === null) {
      captureBase = candidate;
      baseWindowStart = now;
    }
    baseWindowMin = Math.min(baseWindowMin, candidate);
    if (now - baseWindowStart >= BASE_WINDOW_MS) {
      captureBase = baseWindowMin; // follows drift between the audio and wall clocks
      baseWindowMin = Infinity;
      baseWindowStart = now;
    } else {
      captureBase = Math.min(captureBase, candidate);
    }
  }

  function encode(data) {
    if (!encoder || encoder.state !== 'configured' || encoder.encodeQueueSize > 50) {
      leveeHost.dropped += 1;
      return;
    }
    encoder.encode(data);
  }

  function startTrackProcessor(track) {
    leveeHost.capture = 'MediaStreamTrackProcessor';
    // eslint-disable-next-line no-undef
    const processor = new MediaStreamTrackProcessor({ track });
    const r = processor.readable.getReader();
    reader = r;
    (async () => {
      for (;;) {
        let result;
        try {
          result = await r.read();
        } catch {
          return;
        }
        if (result.done) return;
        const data = result.value;
        if (reader !== r || !wanted) {
          data.close();
          return;
        }
        if (data.sampleRate !== 48000) {
          // The encoder is set for 48 kHz: let an AudioContext at 48 kHz resample instead.
          data.close();
          reader = null;
          r.cancel().catch(() => {});
          try {
            await startWorklet(null);
          } catch (e) {
            finish('error', `Could not capture audio: ${e.message}`, true);
          }
          return;
        }
        noteFrame(data.timestamp, data.duration);
        if (data.numberOfChannels === 1) {
          encode(data);
          data.close();
        } else {
          const mono = downmix(data);
          data.close();
          encode(mono);
          mono.close();
        }
      }
    })();
  }

  function downmix(data) {
    const n = data.numberOfFrames;
    const channels = data.numberOfChannels;
    const mono = new Float32Array(n);
    const plane = new Float32Array(n);
    for (let c = 0; c < channels; c += 1) {
      data.copyTo(plane, { planeIndex: c, format: 'f32-planar' });
      for (let i = 0; i < n; i += 1) mono[i] += plane[i] / channels;
    }
    return new AudioData({
      format: 'f32-planar',
      sampleRate: data.sampleRate,
      numberOfFrames: n,
      numberOfChannels: 1,
      timestamp: data.timestamp,
      data: mono,
    });
  }

  async function startWorklet(source) {
    leveeHost.capture = 'AudioWorklet';
    if (!ctx) return;
    const c = ctx;
    await c.audioWorklet.addModule('/assets/capture-worklet.js');
    if (ctx !== c || !wanted) return;
    const src = source || c.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(c, 'levee-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    const mute = c.createGain();
    mute.gain.value = 0;
    src.connect(node);
    node.connect(mute); // keeps the node pulled by the graph, silently
    mute.connect(c.destination);
    workletSamples = 0;
    node.port.onmessage = (ev) => {
      if (!wanted) return;
      const samples = ev.data;
      const timestamp = Math.round((workletSamples * 1e6) / c.sampleRate);
      workletSamples += samples.length;
      const data = new AudioData({
        format: 'f32-planar',
        sampleRate: c.sampleRate,
        numberOfFrames: samples.length,
        numberOfChannels: 1,
        timestamp,
        data: samples,
      });
      noteFrame(timestamp, data.duration);
      encode(data);
      data.close();
    };
    worklet = node;
  }

  // ---------------------------------------------------------------- sending

  function onChunk(chunk) {
    seq += 1;
    if (!ws || !ready || ws.readyState !== WebSocket.OPEN) return; // not connected: not sent
    const size = 17 + chunk.byteLength;
    if (size > MAX_MESSAGE || ws.bufferedAmount > MAX_BUFFERED) {
      leveeHost.dropped += 1;
      return;
    }
    const msg = new Uint8Array(size);
    const dv = new DataView(msg.buffer);
    dv.setUint8(0, KIND_AUDIO);
    dv.setBigUint64(1, BigInt(seq));
    const captureUs = captureBase === null ? Date.now() * 1000 : captureBase + chunk.timestamp;
    dv.setBigUint64(9, BigInt(Math.max(0, Math.round(captureUs))));
    chunk.copyTo(msg.subarray(17));
    ws.send(msg);
    leveeHost.packetsSent += 1;
    leveeHost.bytesSent += size;
  }

  function connect() {
    clearTimeout(retryTimer);
    if (!wanted) return;
    setState(attempt ? 'reconnecting' : 'connecting', 'Connecting to the server…');
    const sock = new WebSocket(publishUrl());
    sock.binaryType = 'arraybuffer';
    ws = sock;
    ready = false;
    sock.onopen = () => {
      if (ws !== sock) return;
      sock.send(JSON.stringify({ key }));
      readyTimer = setTimeout(() => {
        if (ws === sock && !ready) sock.close(4000, 'no answer from the server');
      }, READY_TIMEOUT_MS);
    };
    sock.onmessage = (ev) => {
      if (ws !== sock || typeof ev.data !== 'string') return;
      let msg = null;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && msg.type === 'ready') {
        clearTimeout(readyTimer);
        ready = true;
        attempt = 0;
        setState('live', 'You are live.');
      }
    };
    sock.onclose = (ev) => {
      leveeHost.lastClose = { code: ev.code, reason: ev.reason };
      if (ws !== sock) return;
      ws = null;
      ready = false;
      clearTimeout(readyTimer);
      onClose(ev);
    };
  }

  function onClose(ev) {
    if (!wanted) return;
    const reason = ev.reason || '';
    if (ev.code === 1001 && /ended/i.test(reason)) {
      finish('ended', 'This space has ended.');
    } else if (ev.code === 1008 && /key/i.test(reason)) {
      finish('error', 'The server refused this host key. Check it and try again.', true);
    } else if (ev.code === 1008 && /replaced/i.test(reason)) {
      finish('stopped', 'Another source took over this space.', true);
    } else {
      attempt += 1;
      leveeHost.reconnects += 1;
      const base = Math.min(10000, 500 * 2 ** Math.min(attempt - 1, 5));
      const delay = Math.round(base * (0.5 + Math.random()));
      const why = reason ? `${ev.code}: ${reason}` : `code ${ev.code}`;
      setState('reconnecting', `Connection lost (${why}). Retrying in ${(delay / 1000).toFixed(1)} s…`, true);
      retryTimer = setTimeout(connect, delay);
    }
  }

  // ---------------------------------------------------------------- level meter

  function drawLevel(rms) {
    const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
    const pct = Number.isFinite(db) ? Math.min(1, Math.max(0, (db + 60) / 60)) : 0;
    ui.meterFill.style.width = `${(pct * 100).toFixed(1)}%`;
    const shown = Number.isFinite(db) && db > -60 ? `${db.toFixed(0)} dB` : '–∞ dB';
    ui.meterDb.textContent = shown;
    ui.meter.setAttribute('aria-valuenow', Number.isFinite(db) ? String(Math.max(-60, Math.round(db))) : '-60');
    ui.meter.setAttribute('aria-valuetext', db > -60 ? shown : 'silent');
  }

  setInterval(() => {
    if (analyser) {
      analyser.getFloatTimeDomainData(levelBuf);
      let sum = 0;
      for (let i = 0; i < levelBuf.length; i += 1) sum += levelBuf[i] * levelBuf[i];
      leveeHost.level = Math.sqrt(sum / levelBuf.length);
      drawLevel(leveeHost.level);
    }
    render();
  }, 50);

  // ---------------------------------------------------------------- ending the space

  ui.endSpace.addEventListener('click', async () => {
    const k = ui.key.value.trim();
    if (!k) {
      setState(leveeHost.state, 'Enter the host key to end the space.', true);
      ui.key.focus();
      return;
    }
    // eslint-disable-next-line no-alert
    if (!window.confirm('End this space for everyone? It cannot be restarted.')) return;
    try {
      const res = await fetch(apiUrl, { method: 'DELETE', headers: { Authorization: `Bearer ${k}` } });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      info = body;
      renderSpace();
      finish('ended', 'This space has ended.');
    } catch (e) {
      setState(leveeHost.state, `Could not end the space: ${e.message}`, true);
    }
  });

  setInterval(() => { if (!document.hidden || wanted) refreshInfo(); }, INFO_REFRESH_MS);
  if (!spaceId) setState('error', 'No space id in this address.', true);
  else refreshInfo();
  render();
})();
