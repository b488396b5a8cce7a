/**
 * The read-only operator dashboard: one self-contained page that polls `/api/v1/status` with a token
 * the operator pastes (kept in sessionStorage only). Everything is rendered with DOM text nodes, so
 * names coming from the configuration or from upstreams can never inject markup.
 */
import { createHash } from 'node:crypto';

const style = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --mute: #6e7781; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1rem 1.5rem; max-width: 72rem; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
form { display: flex; gap: .5rem; margin: .75rem 0; } input { flex: 1; font: inherit; padding: .3rem .5rem; }
button { font: inherit; padding: .3rem .8rem; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #8884; vertical-align: top; }
th { font-weight: 600; } code { font-size: 12.5px; }
.up { color: var(--ok); font-weight: 600; } .down, .ejected { color: var(--bad); font-weight: 600; } .unknown { color: var(--warn); font-weight: 600; }
#meta, #error { color: var(--mute); } #error { color: var(--bad); min-height: 1.2em; }
`;

const script = `
'use strict';
const KEY = 'gatehouse-admin-token';
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) { const td = document.createElement('td'); if (c instanceof Node) td.append(c); else td.textContent = c === undefined || c === null ? '' : String(c); tr.append(td); }
  return tr;
}
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function describeMatch(m) {
  if (!m) return '';
  const parts = [];
  if (m.host) parts.push('host ' + (Array.isArray(m.host) ? m.host.join(', ') : m.host));
  parts.push('path ' + (m.path || '/'));
  if (m.methods) parts.push(m.methods.join(','));
  if (m.headers) parts.push('headers ' + Object.keys(m.headers).join(','));
  return parts.join(' · ');
}
function describeTarget(r) {
  if (r.upstream) return r.upstream;
  if (r.split) return r.split.targets.map((t) => t.upstream + ' ' + t.weight).join(' / ');
  return '';
}
function render(s) {
  $('meta').textContent = 'generation ' + s.generation + ' · ' + s.configFile + ' · up ' + Math.round(s.uptime) + ' s · updated ' + new Date().toLocaleTimeString();
  fill($('listeners'), s.listeners.map((l) => row([l.name, l.address || l.bind, l.tls ? 'https' : 'http'])));
  fill($('routes'), s.routes.map((r) => row([r.name, el('code', describeMatch(r.match)), describeTarget(r), r.public ? 'public' : (r.policy || '')])));
  const rows = [];
  for (const u of s.upstreams) {
    for (const sv of u.servers) {
      const check = sv.lastCheck ? (sv.lastCheck.ok ? 'ok' : 'failed') + (sv.lastCheck.status ? ' ' + sv.lastCheck.status : '') + (sv.lastCheck.error ? ' ' + sv.lastCheck.error : '') : '';
      rows.push(row([u.name + ' (' + u.balance + (u.queued ? ', ' + u.queued + ' queued' : '') + ')', el('code', sv.url), el('span', sv.health, sv.health), sv.weight + (sv.backup ? ' backup' : '') + (sv.slowStartFactor < 1 ? ' (warming ' + Math.round(sv.slowStartFactor * 100) + '%)' : ''), sv.active, check]));
    }
  }
  fill($('servers'), rows);
}
async function refresh() {
  const token = sessionStorage.getItem(KEY) || '';
  try {
    const res = await fetch('api/v1/status', { headers: token ? { authorization: 'Bearer ' + token } : {}, cache: 'no-store' });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) { $('error').textContent = res.status + ' ' + (body.message || res.statusText); return; }
    $('error').textContent = '';
    render(body);
  } catch (err) {
    $('error').textContent = 'admin listener unreachable: ' + err.message;
  }
}
$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $('token').value.trim());
  $('token').value = '';
  refresh();
});
refresh();
setInterval(refresh, 2000);
`;

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('base64');
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
<h1>Gatehouse</h1>
<div id="meta">loading…</div>
<form id="token-form" autocomplete="off">
<input id="token" type="password" placeholder="Admin token (kept in this tab only)" aria-label="Admin token">
<button type="submit">Use token</button>
</form>
<div id="error" role="status"></div>
<h2>Listeners</h2>
<table><thead><tr><th>Name</th><th>Address</th><th>Protocol</th></tr></thead><tbody id="listeners"></tbody></table>
<h2>Routes</h2>
<table><thead><tr><th>Name</th><th>Match</th><th>Upstream</th><th>Access</th></tr></thead><tbody id="routes"></tbody></table>
<h2>Upstream servers</h2>
<table><thead><tr><th>Upstream</th><th>Server</th><th>Health</th><th>Weight</th><th>Active</th><th>Last check</th></tr></thead><tbody id="servers"></tbody></table>
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
