// The audience dashboard: one space's numbers (/space/{id}/dashboard, from
// /api/spaces/{id}/audience) or the node's (/dashboard, from /api/audience), asked for every
// POLL_MS and drawn as tiles and SVG charts. Definitions come from the server with the
// numbers. window.leveeDashboard exposes what the page last drew, for tests.
'use strict';

(() => {
  const POLL_MS = 1000;
  // Points drawn per chart at most (the server's series is bounded too).
  const MAX_POINTS = 600;
  const $ = (id) => document.getElementById(id);
  const m = /^\/space\/([^/]+)\/dashboard\/?$/.exec(location.pathname);
  const spaceId = m ? decodeURIComponent(m[1]) : null;
  const url = spaceId
    ? `/api/spaces/${encodeURIComponent(spaceId)}/audience`
    : '/api/audience';

  const state = {
    updates: 0,
    errors: 0,
    scope: spaceId ? 'space' : 'node',
    listeners: null,
    peak: null,
    views: null,
    uniques: null,
    filtered: null,
    attempts: null,
    points: 0,
    charts: {},
  };
  window.leveeDashboard = state;

  const fmtInt = (n) => (n == null ? '–' : Number(n).toLocaleString('en'));
  const fmtDuration = (s) => {
    if (s == null) return '–';
    if (s < 90) return `${s.toFixed(1)} s`;
    if (s < 5400) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  };
  const fmtTime = (unix) => new Date(unix * 1000).toLocaleTimeString('en-GB');

  const SVG = 'http://www.w3.org/2000/svg';
  const el = (name, attrs, text) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  };

  // Draws `lines` ([{ name, color, values }]) over times `t` (unix s) into the figure `id`.
  function chart(id, t, lines) {
    const svg = $(id).querySelector('svg');
    const W = 460;
    const H = 160;
    const L = 44;
    const B = 22;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.replaceChildren();
    let max = 0;
    for (const l of lines) for (const v of l.values) if (v > max) max = v;
    const top = max > 0 ? max * 1.1 : 1;
    const t0 = t.length ? t[0] : 0;
    const t1 = t.length > 1 ? t[t.length - 1] : t0 + 1;
    const x = (ti) => L + ((ti - t0) / Math.max(1, t1 - t0)) * (W - L - 8);
    const y = (v) => H - B - (v / top) * (H - B - 8);
    svg.append(el('line', { x1: L, y1: H - B, x2: W - 8, y2: H - B, class: 'axis' }));
    svg.append(el('line', { x1: L, y1: 8, x2: L, y2: H - B, class: 'axis' }));
    svg.append(el('text', { x: L - 6, y: 14, class: 'tick', 'text-anchor': 'end' }, fmtInt(Math.round(top))));
    svg.append(el('text', { x: L - 6, y: H - B, class: 'tick', 'text-anchor': 'end' }, '0'));
    if (t.length) {
      svg.append(el('text', { x: L, y: H - 6, class: 'tick' }, fmtTime(t0)));
      svg.append(el('text', { x: W - 8, y: H - 6, class: 'tick', 'text-anchor': 'end' }, fmtTime(t1)));
    }
    let lx = L + 6;
    const drawn = {};
    for (const l of lines) {
      const pts = l.values.map((v, i) => `${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      if (l.values.length) {
        svg.append(el('polyline', { points: pts, fill: 'none', style: `stroke: ${l.color}`, 'stroke-width': 2, class: 'series', 'data-name': l.name }));
      }
      if (lines.length > 1) {
        svg.append(el('text', { x: lx, y: 20, style: `fill: ${l.color}`, class: 'legend' }, l.name));
        lx += 10 + l.name.length * 7;
      }
      drawn[l.name] = { points: l.values.length, last: l.values.length ? l.values[l.values.length - 1] : null, max: l.values.length ? Math.max(...l.values) : null };
    }
    state.charts[id] = drawn;
  }

  // Per-second rate of a cumulative column.
  const rate = (t, v) => v.map((x, i) => (i === 0 ? 0 : Math.max(0, x - v[i - 1]) / Math.max(1, t[i] - t[i - 1])));

  function draw(a) {
    const f = a.filtered || {};
    const filtered = (f.sessions || 0) + (f.refused_automated || 0);
    Object.assign(state, {
      listeners: a.listeners,
      peak: a.peak ? a.peak.listeners : null,
      views: a.views,
      uniques: a.uniques,
      filtered,
      attempts: a.joins ? a.joins.attempts : null,
    });
    $('n-listeners').textContent = fmtInt(a.listeners);
    $('n-peak').textContent = fmtInt(a.peak && a.peak.listeners);
    $('n-peak-at').textContent = a.peak && a.peak.at_unix ? `at ${fmtTime(a.peak.at_unix)}` : '';
    $('n-views').textContent = fmtInt(a.views);
    $('n-uniques').textContent = fmtInt(a.uniques);
    const bound = a.exact ? 'exact' : `± ${(a.error_bound * 100).toFixed(1)} %`;
    $('n-views-bound').textContent = bound;
    $('n-uniques-bound').textContent = bound;
    $('n-listen').textContent = fmtDuration(a.listen_time_s);
    $('n-median').textContent = fmtDuration(a.median_session_s);
    $('n-attempts').textContent = fmtInt(a.joins && a.joins.attempts);
    $('n-admitted').textContent = fmtInt(a.joins && a.joins.admitted);
    $('n-queued').textContent = fmtInt(a.joins && a.joins.queued);
    $('n-refused').textContent = fmtInt(a.joins && a.joins.refused);
    $('n-filtered').textContent = fmtInt(filtered);
    if (a.window) {
      const nodes = a.nodes > 1 ? ` · ${a.nodes} nodes` : '';
      $('dash-window').textContent = `From ${a.window.from.at} to ${a.window.to.at}${nodes} · a view is ${a.view_after_s} s of audio`;
    }
    if (spaceId) {
      $('dash-title').textContent = `Audience · ${a.title || spaceId}`;
      const badge = $('dash-state');
      badge.hidden = false;
      badge.textContent = a.state;
      badge.className = `badge ${a.state}`;
      const link = $('dash-space-link');
      link.hidden = false;
      link.href = `/space/${encodeURIComponent(spaceId)}`;
    } else {
      $('dash-title').textContent = 'Audience · this node';
      renderTop(a.top || []);
    }
    const defs = $('definitions');
    if (!defs.childElementCount && a.definitions) {
      for (const [k, v] of Object.entries(a.definitions)) {
        const dt = document.createElement('dt');
        dt.textContent = k.replace(/_/g, ' ');
        const dd = document.createElement('dd');
        dd.textContent = v;
        defs.append(dt, dd);
      }
    }
    const s = a.series;
    if (s && Array.isArray(s.samples)) {
      const rows = s.samples.slice(-MAX_POINTS);
      const col = (name) => {
        const i = s.fields.indexOf(name);
        return rows.map((r) => r[i]);
      };
      const t = col('t_unix');
      state.points = t.length;
      chart('chart-listeners', t, [{ name: 'listeners', color: 'var(--accent)', values: col('listeners') }]);
      chart('chart-joins', t, [{ name: 'joins/s', color: 'var(--ok)', values: rate(t, col('joins')) }]);
      chart('chart-queue', t, [{ name: 'in line', color: 'var(--warn)', values: col('queue') }]);
      chart('chart-views', t, [
        { name: 'views', color: 'var(--accent)', values: col('views') },
        { name: 'uniques', color: 'var(--ok)', values: col('uniques') },
        { name: 'filtered', color: 'var(--danger)', values: col('filtered') },
      ]);
      chart('chart-trouble', t, [{ name: 'trouble/s', color: 'var(--danger)', values: rate(t, col('trouble')) }]);
    }
  }

  function renderTop(top) {
    $('top-panel').hidden = false;
    const rows = top.map((sp) => {
      const tr = document.createElement('tr');
      const name = document.createElement('td');
      const a = document.createElement('a');
      a.href = `/space/${encodeURIComponent(sp.id)}/dashboard`;
      a.textContent = sp.title || sp.id;
      name.append(a);
      tr.append(name);
      for (const v of [sp.state, fmtInt(sp.listeners), fmtInt(sp.peak), fmtInt(sp.views), fmtInt(sp.uniques), fmtInt(sp.filtered)]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      tr.dataset.spaceId = sp.id;
      return tr;
    });
    $('top-rows').replaceChildren(...rows);
  }

  async function poll() {
    try {
      const res = await fetch(url, { cache: 'no-store' });
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
      draw(body);
      state.updates += 1;
      $('status').textContent = '';
    } catch (e) {
      state.errors += 1;
      $('status').textContent = `Could not load the numbers: ${e.message}. Trying again.`;
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
