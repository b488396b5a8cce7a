/**
 * The live operator dashboard: one self-contained page (no build step, no external resource) that
 * follows the admin listener's event stream (`/api/v1/live`, see live.ts) and draws what it receives:
 * traffic per route with sparklines, decisions by reason as stacked bars (refusals in warning
 * colours), upstream servers, the busiest identities with their quota usage, sign-in sessions with a
 * revoke action, and the last reloads.
 *
 * The operator pastes the admin token once; it stays in this tab's sessionStorage and is sent only as
 * an Authorization header. The stream itself is opened with a one-time ticket, because EventSource
 * cannot send headers and the token must never appear in a URL. Everything is rendered with DOM text
 * nodes and SVG elements built one by one, so names coming from the configuration or from clients can
 * never inject markup; the strict CSP allows exactly this page's script and style.
 */
import { createHash } from 'node:crypto';

const style = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #bc4c00; --mute: #6e7781; --line: #8884; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1rem 1.5rem; max-width: 78rem; }
header { display: flex; align-items: baseline; gap: 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
form { display: flex; gap: .5rem; margin: .75rem 0; } input { flex: 1; font: inherit; padding: .3rem .5rem; }
button { font: inherit; padding: .2rem .7rem; cursor: pointer; }
button:focus-visible, input:focus-visible { outline: 2px solid Highlight; outline-offset: 2px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line); vertical-align: middle; }
th { font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; } code { font-size: 12.5px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .75rem; margin: 1rem 0; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .75rem; }
.tile .label { color: var(--mute); font-size: 12px; } .tile .value { font-size: 1.4rem; font-variant-numeric: tabular-nums; }
.up { color: var(--ok); font-weight: 600; } .down, .ejected { color: var(--bad); font-weight: 600; } .unknown { color: var(--warn); font-weight: 600; }
.refused, .bad { color: var(--bad); font-weight: 600; } .alert { color: var(--warn); font-weight: 600; }
#meta, .muted { color: var(--mute); } #error { color: var(--bad); min-height: 1.2em; } #notice { color: var(--ok); min-height: 1.2em; }
#conn { font-size: 12px; padding: .1rem .5rem; border-radius: 1rem; border: 1px solid var(--line); }
#conn.ok { color: var(--ok); } #conn.wait { color: var(--warn); } #conn.off { color: var(--bad); }
svg.spark { vertical-align: middle; } svg.spark polyline { fill: none; stroke: currentColor; stroke-width: 1.5; }
svg.spark.p99 { color: var(--warn); } #decisions-chart svg { width: 100%; height: 140px; display: block; }
.swatch { margin-right: .4rem; vertical-align: -1px; }
.confirm { display: flex; gap: .4rem; align-items: center; }
`;

const script = `
'use strict';
const KEY = 'gatehouse-admin-token';
const $ = (id) => document.getElementById(id);
// The SVG namespace, taken from an SVG element the HTML parser made, so no URL appears in the page.
const SVG = $('svg-ns').namespaceURI;
const ALLOW = ['#2f81f7', '#1a7f37', '#8250df', '#0969da', '#57ab5a', '#6e7781', '#3192aa', '#4d2d8f'];
const REFUSE = ['#cf222e', '#bc4c00', '#d4a72c', '#a40e26', '#e16f24', '#9a6700', '#fa4549', '#7d4e00'];
let live;
let retry;
let confirming = false;
let last;

function token() { return sessionStorage.getItem(KEY) || ''; }
function api(path, init) {
  const t = token();
  const headers = t ? { authorization: 'Bearer ' + t } : {};
  return fetch(path, Object.assign({ cache: 'no-store', headers }, init || {}));
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k of Object.keys(attrs || {})) e.setAttribute(k, String(attrs[k]));
  return e;
}
function cell(c, cls) {
  const td = document.createElement('td');
  if (c instanceof Node) td.append(c); else td.textContent = c === undefined || c === null ? '' : String(c);
  if (cls) td.className = cls;
  return td;
}
function row(cells, data) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.append(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
  if (data) for (const k of Object.keys(data)) tr.dataset[k] = data[k];
  return tr;
}
function fill(tbody, rows, empty, span) {
  if (rows.length === 0) { const tr = row([[empty, 'muted']]); tr.firstChild.colSpan = span; rows = [tr]; }
  tbody.replaceChildren(...rows);
}
function ms(v) {
  if (v === null || v === undefined) return '–';
  if (v >= 1000) return (v / 1000).toFixed(2) + ' s';
  if (v >= 10) return Math.round(v) + ' ms';
  return v.toFixed(1) + ' ms';
}
function rate(v) { return v >= 100 ? String(Math.round(v)) : v.toFixed(1); }
function pct(v) { return (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + '%'; }
function hash(s) { let h = 7; for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0; return h; }
function colour(reason, refused) { const p = refused ? REFUSE : ALLOW; return p[hash(reason) % p.length]; }
function setConn(text, cls) { const c = $('conn'); c.textContent = text; c.className = cls; }

// A sparkline of a series (null values leave gaps), with its summary as the accessible title.
function sparkline(values, title, cls) {
  const w = 120, h = 24;
  const s = svg('svg', { class: 'spark ' + (cls || ''), width: w, height: h, viewBox: '0 0 ' + w + ' ' + h, role: 'img' });
  const t = svg('title'); t.textContent = title; s.append(t);
  let max = 0;
  for (const v of values) if (v !== null && v > max) max = v;
  const step = values.length > 1 ? w / (values.length - 1) : w;
  let points = [];
  const flush = () => { if (points.length > 0) s.append(svg('polyline', { points: points.join(' ') })); points = []; };
  values.forEach((v, i) => {
    if (v === null) { flush(); return; }
    const y = max === 0 ? h - 1 : h - 1 - (v / max) * (h - 2);
    points.push((i * step).toFixed(1) + ',' + y.toFixed(1));
    if (points.length === 1 && (i === values.length - 1 || values[i + 1] === null)) points.push((i * step + 1).toFixed(1) + ',' + y.toFixed(1));
  });
  flush();
  return s;
}

function renderTotals(t) {
  $('t-rps').textContent = rate(t.rps);
  $('t-errors').textContent = pct(t.errorRate);
  $('t-errors').className = 'value' + (t.errorRate > 0 ? ' bad' : '');
  $('t-p50').textContent = ms(t.p50);
  $('t-p99').textContent = ms(t.p99);
  $('t-refused').textContent = String(t.refused);
  $('t-refused').className = 'value' + (t.refused > 0 ? ' refused' : '');
  $('t-requests').textContent = String(t.requests);
}

function renderRoutes(routes) {
  fill($('routes'), routes.map((r) => row([
    r.route,
    [rate(r.rps), 'num rps'],
    sparkline(r.requests, r.route + ': requests per second over the last minute'),
    [String(r.total), 'num total'],
    [pct(r.errorRate), 'num errors' + (r.errorRate > 0 ? ' bad' : '')],
    [ms(r.p50), 'num p50'],
    [ms(r.p99), 'num p99'],
    sparkline(r.p99Series, r.route + ': p99 latency per second over the last minute', 'p99'),
    [String(r.limited.reduce((a, b) => a + b, 0)), 'num limited'],
  ], { route: r.route })), 'no requests in the last minute', 9);
}

// Decisions by reason as stacked bars, one bar per slot; refusals in warning colours, drawn on top.
function renderDecisions(d) {
  const chart = $('decisions-chart');
  const w = 600, h = 140, n = d.slots;
  const s = svg('svg', { viewBox: '0 0 ' + w + ' ' + h, preserveAspectRatio: 'none', role: 'img' });
  const t = svg('title'); t.textContent = 'Decisions by reason per ' + d.slotSeconds + ' s over the last ' + Math.round(n * d.slotSeconds / 60) + ' minutes'; s.append(t);
  const order = d.reasons.filter((r) => !r.refused).concat(d.reasons.filter((r) => r.refused));
  let max = 0;
  for (let i = 0; i < n; i++) { let sum = 0; for (const r of order) sum += r.counts[i] || 0; if (sum > max) max = sum; }
  const bw = w / n;
  for (let i = 0; i < n; i++) {
    let y = h;
    for (const r of order) {
      const c = r.counts[i] || 0;
      if (c === 0) continue;
      const bh = (c / max) * (h - 4);
      y -= bh;
      const rect = svg('rect', { x: (i * bw + 1).toFixed(1), y: y.toFixed(1), width: Math.max(1, bw - 2).toFixed(1), height: bh.toFixed(1), fill: colour(r.reason, r.refused) });
      const rt = svg('title'); rt.textContent = r.reason + ': ' + c; rect.append(rt);
      if (r.refused) rect.setAttribute('class', 'refused-bar');
      s.append(rect);
    }
  }
  chart.replaceChildren(s);
  fill($('reasons'), d.reasons.map((r) => {
    const sw = svg('svg', { class: 'swatch', width: 12, height: 12, 'aria-hidden': 'true' });
    sw.append(svg('rect', { width: 12, height: 12, rx: 2, fill: colour(r.reason, r.refused) }));
    const name = el('span'); name.append(sw, document.createTextNode(r.reason));
    return row([name, [String(r.total), 'num'], [r.refused ? 'refused' : 'allowed', r.refused ? 'refused' : '']], { reason: r.reason });
  }), 'no decisions in the last minutes', 3);
}

function renderUpstreams(upstreams) {
  const rows = [];
  for (const u of upstreams) {
    for (const sv of u.servers) {
      const check = sv.lastCheck ? (sv.lastCheck.ok ? 'ok' : 'failed') + (sv.lastCheck.status ? ' ' + sv.lastCheck.status : '') + (sv.lastCheck.error ? ' ' + sv.lastCheck.error : '') : '';
      rows.push(row([
        u.name + (u.queued ? ' (' + u.queued + ' queued)' : ''),
        el('code', sv.url),
        el('span', sv.health, sv.health),
        [String(sv.active), 'num inflight'],
        [String(sv.ejections), 'num' + (sv.ejections > 0 ? ' alert' : '')],
        sv.weight + (sv.backup ? ' backup' : '') + (sv.slowStartFactor < 1 ? ' (warming ' + Math.round(sv.slowStartFactor * 100) + '%)' : ''),
        check,
      ], { server: sv.url }));
    }
  }
  fill($('servers'), rows, 'no upstreams', 7);
}

function renderIdentities(ids, quotas, quotaError) {
  const byId = new Map(quotas.map((q) => [q.identity, q.quotas]));
  fill($('identities'), ids.map((i) => {
    const q = byId.get(i.identity);
    const usage = q ? q.map((u) => u.quota + ' ' + u.used + '/' + u.limit).join(', ') : (quotaError && byId.size === 0 ? 'unavailable' : '');
    return row([
      i.identity,
      [String(i.requests), 'num requests'],
      [String(i.refused), 'num' + (i.refused > 0 ? ' refused' : '')],
      [String(i.limited), 'num' + (i.limited > 0 ? ' alert' : '')],
      usage,
    ], { identity: i.identity });
  }), 'no identified requests recently', 5);
}

function renderReloads(reloads) {
  fill($('reloads'), reloads.map((r) => row([
    new Date(r.at).toLocaleTimeString(),
    [r.result, r.result === 'success' ? 'up' : 'bad'],
    String(r.generation),
    r.trigger,
    r.error || '',
  ])), 'no reload since the admin listener started', 5);
}

function render(ev) {
  last = ev;
  $('meta').textContent = 'generation ' + (ev.generation === undefined ? '?' : ev.generation) + (ev.traffic.processes > 1 ? ' · ' + ev.traffic.processes + ' processes' : '') + ' · updated ' + new Date(ev.at).toLocaleTimeString();
  renderTotals(ev.traffic.totals);
  renderRoutes(ev.traffic.routes);
  renderDecisions(ev.traffic.decisions);
  renderUpstreams(ev.upstreams);
  renderIdentities(ev.traffic.identities, ev.quotas, ev.quotaError);
  renderReloads(ev.reloads);
}

async function loadSessions() {
  if (confirming) return;
  try {
    const res = await api('api/v1/sessions');
    const body = await res.json().catch(() => ({}));
    if (!res.ok) { $('sessions-note').textContent = res.status + ' ' + (body.message || res.statusText); return; }
    if (confirming) return;
    $('sessions-note').textContent = body.enabled ? body.total + ' active' : 'no sign-in is configured';
    $('t-sessions').textContent = String(body.total);
    fill($('sessions'), body.sessions.map(sessionRow), 'no active sessions', 6);
  } catch (err) {
    $('sessions-note').textContent = 'sessions unavailable: ' + err.message;
  }
}

function sessionRow(s) {
  const who = s.email || s.user || s.subject;
  const action = document.createElement('td');
  const revoke = el('button', 'Revoke', 'revoke');
  revoke.type = 'button';
  revoke.setAttribute('aria-label', 'Revoke the session of ' + who);
  revoke.addEventListener('click', () => askRevoke(action, revoke, s, who));
  action.append(revoke);
  const tr = row([s.subject, s.email || '', new Date(s.createdAt).toLocaleString(), new Date(s.lastSeen).toLocaleString(), new Date(s.expiresAt).toLocaleString()], { session: s.id, subject: s.subject });
  tr.append(action);
  return tr;
}

// Revoking asks first, in place: Confirm takes the focus, Escape or Cancel go back.
function askRevoke(td, revoke, s, who) {
  confirming = true;
  const box = el('span', null, 'confirm');
  const q = el('span', 'Sign ' + who + ' out?');
  const yes = el('button', 'Confirm revoke', 'confirm-revoke'); yes.type = 'button';
  const no = el('button', 'Cancel', 'cancel-revoke'); no.type = 'button';
  const back = () => { confirming = false; td.replaceChildren(revoke); revoke.focus(); };
  no.addEventListener('click', back);
  box.addEventListener('keydown', (e) => { if (e.key === 'Escape') back(); });
  yes.addEventListener('click', async () => {
    yes.disabled = true; no.disabled = true;
    try {
      const res = await api('api/v1/sessions/' + encodeURIComponent(s.id) + '/revoke', { method: 'POST' });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) { $('error').textContent = res.status + ' ' + (body.message || res.statusText); back(); return; }
      $('notice').textContent = 'Session of ' + who + ' revoked';
    } catch (err) {
      $('error').textContent = 'revoke failed: ' + err.message;
    }
    confirming = false;
    loadSessions();
  });
  box.append(q, yes, no);
  td.replaceChildren(box);
  yes.focus();
}

async function connect() {
  clearTimeout(retry);
  if (live) { live.close(); live = undefined; }
  setConn('connecting', 'wait');
  let res;
  try {
    res = await api('api/v1/live/ticket', { method: 'POST' });
  } catch (err) {
    setConn('offline', 'off');
    $('error').textContent = 'admin listener unreachable: ' + err.message;
    retry = setTimeout(connect, 3000);
    return;
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    setConn('not connected', 'off');
    $('error').textContent = res.status + ' ' + (body.message || res.statusText);
    // A refused token needs the operator; anything else is retried.
    if (res.status !== 401 && res.status !== 403) retry = setTimeout(connect, 3000);
    return;
  }
  $('error').textContent = '';
  const es = new EventSource('api/v1/live?ticket=' + encodeURIComponent(body.ticket));
  live = es;
  es.addEventListener('snapshot', (e) => {
    setConn('live', 'ok');
    try { render(JSON.parse(e.data)); } catch (err) { $('error').textContent = 'bad snapshot: ' + err.message; }
  });
  es.addEventListener('problem', (e) => {
    try { $('error').textContent = JSON.parse(e.data).message; } catch { $('error').textContent = 'snapshot failed'; }
  });
  const lost = () => {
    es.close();
    if (live !== es) return;
    live = undefined;
    setConn('reconnecting', 'wait');
    retry = setTimeout(connect, 2000);
  };
  es.addEventListener('close', lost);
  es.addEventListener('error', lost);
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $('token').value.trim());
  $('token').value = '';
  connect();
  loadSessions();
});
$('refresh-sessions').addEventListener('click', loadSessions);
connect();
loadSessions();
setInterval(loadSessions, 5000);
`;

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('base64');
}

function tile(id: string, label: string): string {
  return `<div class="tile"><div class="label">${label}</div><div class="value" id="${id}">–</div></div>`;
}

/** The dashboard page. */
export const dashboardHtml = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gatehouse</title>
<style>${style}</style>
</head>
<body>
<svg id="svg-ns" width="0" height="0" aria-hidden="true" focusable="false"></svg>
<header><h1>Gatehouse</h1><span id="conn" class="wait" role="status">connecting</span></header>
<div id="meta">loading…</div>
<form id="token-form" autocomplete="off">
<input id="token" type="password" placeholder="Admin token (kept in this tab only)" aria-label="Admin token">
<button type="submit">Use token</button>
</form>
<div id="error" role="alert"></div>
<div id="notice" role="status"></div>
<section class="tiles" aria-label="Totals">
${tile('t-rps', 'Requests/s')}${tile('t-errors', 'Error rate (5xx, 1 min)')}${tile('t-p50', 'p50 latency')}${tile('t-p99', 'p99 latency')}${tile('t-requests', 'Requests (1 min)')}${tile('t-refused', 'Refused (5 min)')}${tile('t-sessions', 'Active sessions')}
</section>
<h2>Routes <span class="muted">last 60 s</span></h2>
<table><thead><tr><th>Route</th><th class="num">Req/s</th><th>Requests</th><th class="num">Total</th><th class="num">Errors</th><th class="num">p50</th><th class="num">p99</th><th>p99</th><th class="num">429</th></tr></thead><tbody id="routes"></tbody></table>
<h2>Decisions by reason <span class="muted">last 5 min</span></h2>
<div id="decisions-chart"></div>
<table><thead><tr><th>Reason</th><th class="num">Requests</th><th>Outcome</th></tr></thead><tbody id="reasons"></tbody></table>
<h2>Upstream servers</h2>
<table><thead><tr><th>Upstream</th><th>Server</th><th>Health</th><th class="num">In flight</th><th class="num">Ejections</th><th>Weight</th><th>Last check</th></tr></thead><tbody id="servers"></tbody></table>
<h2>Top identities <span class="muted">last 1–2 min</span></h2>
<table><thead><tr><th>Identity</th><th class="num">Requests</th><th class="num">Refused</th><th class="num">429</th><th>Quota usage</th></tr></thead><tbody id="identities"></tbody></table>
<h2>Active sessions <span id="sessions-note" class="muted"></span> <button id="refresh-sessions" type="button">Refresh</button></h2>
<table><thead><tr><th>Subject</th><th>Email</th><th>Signed in</th><th>Last seen</th><th>Ends</th><th>Action</th></tr></thead><tbody id="sessions"></tbody></table>
<h2>Reloads</h2>
<table><thead><tr><th>Time</th><th>Result</th><th>Generation</th><th>Trigger</th><th>Error</th></tr></thead><tbody id="reloads"></tbody></table>
<script>${script}</script>
</body>
</html>
`;

/** Content-Security-Policy allowing exactly the inline style and script above, and same-origin fetches. */
export const dashboardCsp = [
  "default-src 'none'",
  `script-src 'sha256-${sha256(script)}'`,
  `style-src 'sha256-${sha256(style)}'`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
