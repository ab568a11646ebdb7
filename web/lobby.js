// levee lobby: lists spaces (refreshed every few seconds) and creates new ones.
'use strict';

(() => {
  const REFRESH_MS = 3000;
  const STATE_ORDER = { live: 0, scheduled: 1, ended: 2 };

  const $ = (id) => document.getElementById(id);
  const list = $('spaces');
  const listError = $('spaces-error');
  const updated = $('spaces-updated');

  const spacePath = (id) => `/space/${encodeURIComponent(id)}`;

  function badge(state) {
    const span = document.createElement('span');
    span.className = `badge ${state}`;
    span.textContent = state;
    return span;
  }

  const ACCESS_LABEL = { ticketed: 'ticketed', challenge: 'checks browsers' };
  const ACCESS_TEXT = {
    open: 'Open: anyone with the link listens.',
    ticketed: 'Ticketed: listeners join through the line and get a ticket.',
    challenge: 'Challenge: browsers solve a small proof of work, then join through the line.',
  };

  function startText(unixS) {
    const d = new Date(unixS * 1000);
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === new Date().toDateString() ? `at ${time}` : `${d.toLocaleDateString()} ${time}`;
  }

  function startLabel(unixS) {
    return unixS * 1000 > Date.now() ? `starts ${startText(unixS)}` : `was due ${startText(unixS)}`;
  }

  function listenersText(n) {
    return `${n} listening`;
  }

  function render(spaces) {
    spaces.sort((a, b) =>
      (STATE_ORDER[a.state] ?? 3) - (STATE_ORDER[b.state] ?? 3) ||
      (b.created_at ?? 0) - (a.created_at ?? 0) ||
      String(a.id).localeCompare(String(b.id)));
    const items = spaces.map((s) => {
      const li = document.createElement('li');
      li.dataset.spaceId = s.id;
      li.dataset.state = s.state;
      li.className = `is-${s.state}`;

      const title = document.createElement('span');
      title.className = 'title';
      const a = document.createElement('a');
      a.href = spacePath(s.id);
      a.textContent = s.title || s.id;
      title.append(a);

      const listeners = document.createElement('span');
      listeners.className = 'listeners';
      listeners.dataset.listeners = String(s.listeners ?? 0);
      listeners.textContent = s.state === 'ended' ? '' : listenersText(s.listeners ?? 0);

      const extras = [];
      if (s.access && s.access !== 'open') {
        const tag = document.createElement('span');
        tag.className = 'tag';
        tag.dataset.access = s.access;
        tag.textContent = ACCESS_LABEL[s.access] || s.access;
        extras.push(tag);
      }
      if (s.state === 'scheduled' && s.scheduled_start) {
        const when = document.createElement('span');
        when.className = 'listeners';
        when.textContent = startLabel(s.scheduled_start);
        extras.push(when);
      }
      if (s.queue_waiting > 0) {
        const waiting = document.createElement('span');
        waiting.className = 'listeners';
        waiting.textContent = `${s.queue_waiting} in line`;
        extras.push(waiting);
      }

      li.append(title, ...extras, badge(s.state), listeners);
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'No spaces yet. Start one below.';
      items.push(li);
    }
    list.replaceChildren(...items);
    list.setAttribute('aria-busy', 'false');
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const res = await fetch('/api/spaces', { cache: 'no-store' });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      render(Array.isArray(body.spaces) ? body.spaces : []);
      listError.hidden = true;
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      listError.textContent = `Could not load spaces: ${e.message}`;
      listError.hidden = false;
    } finally {
      refreshing = false;
    }
  }

  // Create a space.
  const form = $('create-form');
  const titleInput = $('create-title');
  const submit = $('create-submit');
  const createError = $('create-error');
  const accessInput = $('create-access');
  const startInput = $('create-start');

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const title = titleInput.value.trim();
    if (!title) {
      titleInput.focus();
      return;
    }
    const request = { title, access: accessInput.value || 'open' };
    if (startInput.value) {
      // datetime-local has no zone: the Date constructor reads it as local time.
      const ms = new Date(startInput.value).getTime();
      if (!Number.isFinite(ms)) {
        showCreateError('The start time is not a valid date.', startInput);
        return;
      }
      if (ms <= Date.now()) {
        showCreateError('The start time is in the past: leave it empty to start whenever you go live.', startInput);
        return;
      }
      request.scheduled_start = Math.floor(ms / 1000);
    }
    submit.disabled = true;
    createError.hidden = true;
    try {
      const res = await fetch('/api/spaces', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(request),
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      showCreated(body);
      form.reset();
      refresh();
    } catch (e) {
      showCreateError(`Could not create the space: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  });

  function showCreateError(message, field) {
    createError.textContent = message;
    createError.hidden = false;
    if (field) field.focus();
  }

  function showCreated(space) {
    $('created-title').textContent = space.title;
    const access = $('created-access');
    access.dataset.access = space.access || 'open';
    access.textContent = (ACCESS_TEXT[space.access] || space.access || 'open') +
      (space.scheduled_start ? ` Starts ${startText(space.scheduled_start)}; listeners can line up now.` : '');
    $('created-key').value = space.host_key;
    // The key travels in the fragment, which browsers never send to the server.
    $('created-host').href = `${spacePath(space.id)}/host#key=${encodeURIComponent(space.host_key)}`;
    $('created-page').href = spacePath(space.id);
    const source = space.urls && space.urls.source;
    $('created-ffmpeg').textContent = source
      ? `ffmpeg -re -i talk.wav -c:a libopus -b:a 32k -f ogg ${source}`
      : '(no Icecast source URL for this space)';
    const box = $('created');
    box.hidden = false;
    $('created-heading').focus();
  }

  $('copy-key').addEventListener('click', async () => {
    const input = $('created-key');
    const btn = $('copy-key');
    try {
      await navigator.clipboard.writeText(input.value);
      btn.textContent = 'Copied';
    } catch {
      input.select();
      btn.textContent = 'Press Ctrl+C';
    }
    setTimeout(() => { btn.textContent = 'Copy'; }, 2000);
  });

  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
})();
