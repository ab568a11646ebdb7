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

      li.append(title, badge(s.state), listeners);
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

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const title = titleInput.value.trim();
    if (!title) {
      titleInput.focus();
      return;
    }
    submit.disabled = true;
    createError.hidden = true;
    try {
      const res = await fetch('/api/spaces', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ title }),
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      showCreated(body);
      form.reset();
      refresh();
    } catch (e) {
      createError.textContent = `Could not create the space: ${e.message}`;
      createError.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  function showCreated(space) {
    $('created-title').textContent = space.title;
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
