// levee speaker page: the browser publishes its microphone over WebRTC with WHIP (RFC 9725,
// docs/protocol.md "WHIP"), with its own echo cancellation, noise suppression and jitter
// handling, and plays what comes back on the same connection: everyone else on the stage
// (the server's mix-minus). The speaker key travels in the #key= fragment, never sent as
// part of the address.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const parts = location.pathname.split('/').filter(Boolean); // ["space", id, "speak"]
  const spaceId = decodeURIComponent(parts[1] || '');
  const key = new URLSearchParams(location.hash.slice(1)).get('key') || '';
  const api = `/api/spaces/${encodeURIComponent(spaceId)}`;
  const STATS_MS = 1000;

  const s = {
    state: 'idle', error: '', session: null, speakerId: null, muted: false,
    packetsSent: 0, packetsReceived: 0, rttMs: null, jitterBufferMs: null, connected: false,
  };
  window.leveeSpeak = s;
  let pc = null;
  let mic = null;
  let statsTimer = 0;

  function setState(state, message, isError = false) {
    s.state = state;
    s.error = isError ? message : '';
    $('stat-state').textContent = state;
    const st = $('status');
    st.textContent = message;
    st.classList.toggle('error', isError);
    $('join').disabled = state === 'connecting' || state === 'live';
    $('leave').disabled = !(state === 'connecting' || state === 'live');
    $('mute').disabled = state !== 'live' || !s.speakerId;
  }

  async function info() {
    // The speaker's own id comes with the key in the link (#key=…&id=…): it mutes itself.
    s.speakerId = new URLSearchParams(location.hash.slice(1)).get('id') || null;
    try {
      const r = await fetch(api);
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const j = await r.json();
      $('space-title').textContent = j.title;
      $('space-state').textContent = j.state;
    } catch (e) {
      setState('error', `Could not load the space: ${e.message}`, true);
    }
  }

  async function join() {
    if (!key) {
      setState('error', 'This link carries no speaker key (#key=…).', true);
      return;
    }
    setState('connecting', 'Asking for the microphone…');
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
    } catch (e) {
      setState('error', `No microphone: ${e.message}`, true);
      return;
    }
    pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    const track = mic.getAudioTracks()[0];
    pc.addTransceiver(track, { direction: 'sendrecv', streams: [mic] });
    pc.ontrack = (ev) => {
      const audio = $('return-audio');
      audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      audio.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (!pc) return;
      if (pc.connectionState === 'connected') {
        s.connected = true;
        setState('live', 'You are on the stage.');
      } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        setState('error', `The connection ${pc.connectionState}.`, true);
        stop(false);
      }
    };
    setState('connecting', 'Connecting…');
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const res = await fetch(`/live/${encodeURIComponent(spaceId)}/whip`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` },
        body: pc.localDescription.sdp,
      });
      const text = await res.text();
      if (res.status !== 201) throw new Error(`${res.status}: ${text.trim()}`);
      s.session = res.headers.get('Location');
      await pc.setRemoteDescription({ type: 'answer', sdp: text });
    } catch (e) {
      setState('error', `The server refused: ${e.message}`, true);
      stop(false);
      return;
    }
    statsTimer = setInterval(readStats, STATS_MS);
  }

  async function readStats() {
    if (!pc) return;
    const stats = await pc.getStats();
    stats.forEach((r) => {
      if (r.type === 'outbound-rtp' && r.kind === 'audio') s.packetsSent = r.packetsSent;
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        s.packetsReceived = r.packetsReceived;
        if (r.jitterBufferEmittedCount > 0) {
          s.jitterBufferMs = Math.round((1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount);
        }
      }
      if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime !== undefined) {
        s.rttMs = Math.round(r.currentRoundTripTime * 1000);
      }
    });
    $('stat-sent').textContent = String(s.packetsSent);
    $('stat-heard').textContent = String(s.packetsReceived);
    $('stat-rtt').textContent = s.rttMs === null ? '–' : String(s.rttMs);
  }

  async function stop(tellServer = true) {
    clearInterval(statsTimer);
    if (tellServer && s.session) {
      fetch(s.session, { method: 'DELETE', headers: { Authorization: `Bearer ${key}` } }).catch(() => {});
    }
    s.session = null;
    if (pc) { pc.close(); pc = null; }
    if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
    if (s.state !== 'error') setState('idle', 'You left the stage.');
  }

  async function toggleMute() {
    if (!s.speakerId) return;
    const want = !s.muted;
    const r = await fetch(`${api}/speakers/${encodeURIComponent(s.speakerId)}`, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` },
      body: JSON.stringify({ muted: want }),
    });
    if (r.ok) {
      s.muted = want;
      $('mute').textContent = want ? 'Unmute' : 'Mute';
    } else {
      const j = await r.json().catch(() => ({}));
      setState(s.state, j.error || `HTTP ${r.status}`, true);
    }
  }

  $('join').addEventListener('click', join);
  $('leave').addEventListener('click', () => stop(true));
  $('mute').addEventListener('click', toggleMute);
  window.addEventListener('pagehide', () => stop(true));
  info();
})();
