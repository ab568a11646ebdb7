// levee stage panel, on the space page and the host page (docs/protocol.md, "The stage").
//
// Everyone sees who is on the stage. Who speaks arrives in the stream itself: the player
// (player.js) turns each STAGE message (kind 0x04: revision, on-stage bits, speaking bits,
// one bit per mixer slot, 0 = host) into a `levee-stage` event; the list is fetched again
// only when the revision moves. A listener can ask to speak; the host page (which holds the
// host key in its #key= fragment) invites, mutes, removes and answers requests.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const panel = $('stage-panel');
  if (!panel) return;
  const parts = location.pathname.split('/').filter(Boolean); // ["space", id, ...]
  const spaceId = decodeURIComponent(parts[1] || '');
  const api = `/api/spaces/${encodeURIComponent(spaceId)}`;
  const key = new URLSearchParams(location.hash.slice(1)).get('key') || '';
  const manager = !!$('stage-invite');
  const REQUEST_POLL_MS = 2000;
  const MANAGER_REFRESH_MS = 3000;

  const state = {
    revision: -1, speaking: 0, everSpoke: 0, onStage: 0, speakers: [], requests: [],
    fetches: 0, stageMessages: 0, invited: null, request: null, error: '',
  };
  window.leveeStage = state;

  function auth(k) { return k ? { Authorization: `Bearer ${k}` } : {}; }

  async function call(method, path, body, k = key) {
    const headers = { ...auth(k) };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`${api}${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try { json = await res.json(); } catch { json = null; }
    if (!res.ok) throw new Error((json && json.error) || `HTTP ${res.status}`);
    return json;
  }

  function say(text, isError = false) {
    const s = $('stage-status');
    if (!s) return;
    s.textContent = text;
    s.classList.toggle('error', isError);
    state.error = isError ? text : '';
  }

  async function refresh() {
    try {
      const st = await call('GET', '/stage', undefined, manager ? key : '');
      state.fetches += 1;
      state.revision = st.revision;
      state.speakers = st.speakers;
      state.requests = st.requests || [];
      if (state.stageMessages === 0) {
        // No stream on this page (the host page): the marks come from the answer itself.
        state.speaking = st.speakers.reduce((b, x) => (x.speaking ? b | (1 << x.slot) : b), st.host.speaking ? 1 : 0);
        state.onStage = st.speakers.reduce((b, x) => (x.on_stage ? b | (1 << x.slot) : b), st.host.in_mix ? 1 : 0);
      }
      render();
    } catch (e) {
      say(`Could not read the stage: ${e.message}`, true);
    }
  }

  function person(name, slot, extra) {
    const li = document.createElement('li');
    li.className = 'stage-person';
    li.dataset.slot = String(slot);
    const dot = document.createElement('span');
    dot.className = 'speaking-dot';
    dot.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'stage-name';
    label.textContent = name;
    const tag = document.createElement('span');
    tag.className = 'stage-tag';
    li.append(dot, label, tag);
    if (extra) li.append(extra);
    return li;
  }

  function button(text, onClick) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    b.addEventListener('click', onClick);
    return b;
  }

  function render() {
    const list = $('stage-list');
    list.replaceChildren(person('Host', 0));
    for (const s of state.speakers) {
      let controls = null;
      if (manager) {
        controls = document.createElement('span');
        controls.className = 'stage-controls';
        controls.append(
          button(s.muted ? 'Unmute' : 'Mute', () => act('PATCH', `/speakers/${s.speaker_id}`, { muted: !s.muted })),
          button('Remove', () => act('DELETE', `/speakers/${s.speaker_id}`)),
        );
      }
      list.append(person(s.name + (s.role === 'cohost' ? ' (co-host)' : ''), s.slot, controls));
    }
    paint();
    const reqs = $('stage-requests');
    if (reqs) {
      reqs.replaceChildren();
      for (const r of state.requests.filter((q) => q.answer === 'waiting')) {
        const li = document.createElement('li');
        li.textContent = `${r.name} asks to speak `;
        li.append(
          button('Accept', () => act('POST', '/speakers', { request_id: r.request_id })),
          button('Decline', () => act('DELETE', `/requests/${r.request_id}`)),
        );
        reqs.append(li);
      }
      $('stage-requests-empty').hidden = reqs.children.length > 0;
    }
  }

  // Speaking and on-stage marks, from the newest STAGE message.
  function paint() {
    for (const li of document.querySelectorAll('#stage-list .stage-person')) {
      const bit = 1 << Number(li.dataset.slot);
      const speaking = (state.speaking & bit) !== 0;
      const on = (state.onStage & bit) !== 0;
      li.classList.toggle('speaking', speaking);
      li.classList.toggle('on-stage', on);
      const s = state.speakers.find((x) => x.slot === Number(li.dataset.slot));
      li.querySelector('.stage-tag').textContent =
        speaking ? 'speaking' : s && s.muted ? 'muted' : on ? 'on stage' : li.dataset.slot === '0' ? '' : 'invited';
    }
  }

  async function act(method, path, body) {
    try {
      const r = await call(method, path, body);
      if (r && r.key && r.urls) showInvited(r);
      await refresh();
    } catch (e) {
      say(e.message, true);
    }
  }

  function speakerPage(r) {
    return r.urls && r.urls.page ? r.urls.page
      : `${location.origin}/space/${encodeURIComponent(spaceId)}/speak#key=${encodeURIComponent(r.key)}&id=${encodeURIComponent(r.speaker_id)}`;
  }

  function showInvited(r) {
    state.invited = r;
    const box = $('stage-invited');
    if (!box) return;
    box.hidden = false;
    $('invited-name').textContent = r.name;
    const a = $('invited-page');
    a.href = speakerPage(r);
    a.textContent = a.href;
    $('invited-source').textContent = r.urls.source;
    say(`${r.name} is invited: send them their link.`);
  }

  window.addEventListener('levee-stage', (ev) => {
    const { revision, onStage, speaking } = ev.detail;
    state.stageMessages += 1;
    state.onStage = onStage;
    state.speaking = speaking;
    state.everSpoke |= speaking;
    if (revision !== state.revision) refresh(); else paint();
  });

  const invite = $('stage-invite');
  if (invite) {
    invite.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const name = $('invite-name').value.trim();
      const role = $('invite-cohost').checked ? 'cohost' : 'speaker';
      if (name) act('POST', '/speakers', { name, role });
    });
  }
  // The host page manages; a page without a stream (the speaker's) has no STAGE messages:
  // both read the stage again every few seconds.
  if (invite || !$('play')) setInterval(refresh, MANAGER_REFRESH_MS);

  const ask = $('stage-ask');
  if (ask) {
    ask.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = $('ask-name').value.trim();
      if (!name) return;
      try {
        const r = await call('POST', '/requests', { name }, '');
        state.request = { id: r.request_id, token: r.token, answer: 'waiting' };
        ask.hidden = true;
        say('Your request is with the host.');
        pollAnswer();
      } catch (e) {
        say(e.message, true);
      }
    });
  }

  async function pollAnswer() {
    const q = state.request;
    try {
      const r = await call('GET', `/requests/${q.id}`, undefined, q.token);
      q.answer = r.answer;
      if (r.answer === 'accepted' && r.key) {
        q.key = r.key;
        const a = $('stage-go');
        a.href = speakerPage(r);
        a.hidden = false;
        say('The host accepted: you can go on stage.');
        return;
      }
      if (r.answer === 'declined') {
        say('The host declined your request.');
        return;
      }
    } catch (e) {
      say(e.message, true);
    }
    setTimeout(pollAnswer, REQUEST_POLL_MS);
  }

  refresh();
})();
