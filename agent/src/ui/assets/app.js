// palisade's browser view: plain DOM and SVG, no dependencies. It polls the
// agent's aggregates (the flow map, the verdict tail) twice a second.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const VERDICT = {
  ALLOWED: { sym: '✓', word: 'allowed' },
  DROPPED: { sym: '✕', word: 'dropped' },
  AUDIT: { sym: '!', word: 'audit: would drop' },
};
const ORDER = ['ALLOWED', 'DROPPED', 'AUDIT'];

const state = {
  view: 'map',
  namespaces: [],      // every namespace the agent knows
  selected: null,      // Set of selected namespaces; null: all
  edge: null,          // id of the selected edge
  tailSeq: 0,
  tailKey: '',
  pods: [],
};

const $ = (s) => document.querySelector(s);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function sv(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function status(text, error) {
  const s = $('#status');
  s.textContent = text;
  s.className = error ? 'error' : '';
}

async function get(url) {
  const r = await fetch(url, { cache: 'no-store' });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function nsQuery() {
  if (!state.selected) return '';
  return 'namespace=' + encodeURIComponent([...state.selected].join(','));
}

// ---- namespaces filter ----

function renderNamespaces(all) {
  if (all.join() === state.namespaces.join()) return;
  state.namespaces = all;
  const boxes = $('#ns-boxes');
  boxes.replaceChildren();
  for (const ns of all) {
    const input = el('input', { type: 'checkbox', value: ns });
    input.checked = !state.selected || state.selected.has(ns);
    input.addEventListener('change', () => {
      const chosen = [...boxes.querySelectorAll('input:checked')].map((i) => i.value);
      state.selected = chosen.length === all.length ? null : new Set(chosen);
      refreshAll();
    });
    boxes.append(el('label', {}, input, ' ' + ns));
  }
}

$('#ns-all').addEventListener('click', () => {
  state.selected = null;
  for (const i of document.querySelectorAll('#ns-boxes input')) i.checked = true;
  refreshAll();
});

// ---- tabs ----

const TABS = ['map', 'verdicts', 'matrix', 'policies'];

function show(view, focus) {
  state.view = view;
  for (const t of TABS) {
    const tab = $('#tab-' + t);
    const on = t === view;
    tab.setAttribute('aria-selected', on);
    tab.tabIndex = on ? 0 : -1;
    $('#view-' + t).hidden = !on;
    if (on && focus) tab.focus();
  }
  refreshAll();
}

for (const t of TABS) {
  const tab = $('#tab-' + t);
  tab.addEventListener('click', () => show(t));
  tab.addEventListener('keydown', (e) => {
    const i = TABS.indexOf(t);
    if (e.key === 'ArrowRight') show(TABS[(i + 1) % TABS.length], true);
    else if (e.key === 'ArrowLeft') show(TABS[(i + TABS.length - 1) % TABS.length], true);
    else return;
    e.preventDefault();
  });
}

function activate(node, fn) {
  node.addEventListener('click', fn);
  node.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      fn();
    }
  });
}

// ---- the flow map ----

const map = {
  built: '',          // layout key: the node ids it was drawn for
  pos: new Map(),     // node id -> {x, y}
  edges: new Map(),   // edge id -> {g, path, label, rect, text}
  data: new Map(),    // edge id -> latest edge JSON
};

const COL_W = 200;
const ROW_H = 84;
const TOP = 10;

function layout(nodes) {
  const groups = new Map();
  for (const n of nodes) {
    const key = n.namespace === null ? '' : n.namespace;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(n);
  }
  const names = [...groups.keys()].filter((k) => k !== '').sort();
  if (groups.has('')) names.push('');
  const rows = Math.max(1, ...[...groups.values()].map((g) => g.length));
  const width = Math.max(names.length, 1) * COL_W + 20;
  const height = TOP + 36 + rows * ROW_H + 10;
  return { groups, names, width, height };
}

function drawMap(data) {
  const svg = $('#map');
  const key = data.nodes.map((n) => n.id).join('\n');
  if (key !== map.built) {
    map.built = key;
    map.pos.clear();
    map.edges.clear();
    const { groups, names, width, height } = layout(data.nodes);
    svg.replaceChildren();
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.style.maxWidth = width * 1.3 + 'px';
    const defs = sv('defs');
    for (const v of ORDER) {
      const m = sv('marker', { id: 'arrow-' + v, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 12, markerHeight: 12, markerUnits: 'userSpaceOnUse', orient: 'auto' });
      m.append(sv('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead', fill: `var(--${v.toLowerCase()})` }));
      defs.append(m);
    }
    svg.append(defs);
    const gGroups = sv('g');
    const gEdges = sv('g', { id: 'edges' });
    const gNodes = sv('g');
    names.forEach((ns, i) => {
      const x0 = 10 + i * COL_W;
      const members = groups.get(ns);
      const box = sv('rect', { class: 'ns-box', x: x0 + 6, y: TOP, width: COL_W - 12, height: 36 + members.length * ROW_H, rx: 8 });
      const label = sv('text', { class: 'ns-label', x: x0 + 16, y: TOP + 20 });
      label.textContent = ns === '' ? 'outside the pods' : 'namespace ' + ns;
      gGroups.append(box, label);
      members.forEach((n, j) => {
        const x = x0 + COL_W / 2;
        const y = TOP + 36 + j * ROW_H + 18;
        map.pos.set(n.id, { x, y });
        const pods = n.pods.length ? `, pods: ${n.pods.join(', ')}` : '';
        const g = sv('g', { class: 'node', tabindex: 0, role: 'button', 'data-id': n.id, 'aria-label': `${n.namespace ? 'workload ' : ''}${n.id}${pods}` });
        const shape = n.namespace === null
          ? sv('rect', { x: x - 11, y: y - 11, width: 22, height: 22 })
          : sv('circle', { cx: x, cy: y, r: 12 });
        const t = sv('text', { x, y: y + 28, 'text-anchor': 'middle' });
        t.textContent = n.name.length > 26 ? n.name.slice(0, 25) + '…' : n.name;
        const title = sv('title');
        title.textContent = n.id + pods;
        g.append(title, shape, t);
        if (n.pods.length) activate(g, () => openPod(`${n.namespace}/${n.pods[0]}`));
        gNodes.append(g);
      });
    });
    svg.append(gGroups, gEdges, gNodes);
  }
  drawEdges(data.edges);
}

// An edge's path, and where along it a point at t (0..1) lies.
function curve(a, b, verdict) {
  const k = ORDER.indexOf(verdict);
  if (a.x === b.x && a.y === b.y) {
    const r = 22 + k * 10;
    return { d: `M${a.x + 10},${a.y - 8} C${a.x + 60 + r},${a.y - 40 - r} ${a.x + 60 + r},${a.y + 40 + r} ${a.x + 10},${a.y + 8}`, at: () => ({ x: a.x + 40 + r, y: a.y }) };
  }
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy);
  const off = 24 + k * 22;
  // Perpendicular to the direction of travel: a→b and b→a bend apart.
  const cx = (a.x + b.x) / 2 - (dy / len) * off;
  const cy = (a.y + b.y) / 2 + (dx / len) * off;
  const sx = a.x + (dx / len) * 14;
  const sy = a.y + (dy / len) * 14;
  const ex = b.x - (dx / len) * 16;
  const ey = b.y - (dy / len) * 16;
  const at = (t) => ({
    x: (1 - t) * (1 - t) * sx + 2 * (1 - t) * t * cx + t * t * ex,
    y: (1 - t) * (1 - t) * sy + 2 * (1 - t) * t * cy + t * t * ey,
  });
  return { d: `M${sx},${sy} Q${cx},${cy} ${ex},${ey}`, at };
}

function rate(r) {
  return r >= 10 ? Math.round(r) : r.toFixed(1);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// Where a label goes: the first point along its edge, from the middle
// outwards, where it overlaps nothing placed before it (else the middle).
function place(placed, at, w) {
  const overlaps = (b) => placed.some((p) => b.x < p.x + p.w && p.x < b.x + b.w && b.y < p.y + p.h && p.y < b.y + b.h);
  const box = (t) => {
    const p = at(t);
    return { x: p.x - w / 2, y: p.y - 9, w, h: 18 };
  };
  const tries = [0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.2, 0.8].map(box);
  // Then above and below the middle, as close as it gets.
  for (let i = 1; i < 12; i++) {
    const step = Math.ceil(i / 2) * 20 * (i % 2 ? 1 : -1);
    tries.push({ ...tries[0], y: tries[0].y + step });
  }
  const b = tries.find((b) => b.y >= 2 && !overlaps(b)) || tries[0];
  placed.push(b);
  return b;
}

function drawEdges(edges) {
  const layer = $('#edges');
  const live = new Set();
  // Nodes and their names first: labels keep clear of them.
  const placed = [...map.pos.values()].map((p) => ({ x: p.x - 30, y: p.y - 13, w: 60, h: 46 }));
  // Drops and audits get the best places: they are what one looks for.
  const rank = (e) => (e.verdict === 'ALLOWED' ? 1 : 0);
  for (const e of [...edges].sort((a, b) => rank(a) - rank(b))) {
    const a = map.pos.get(e.source);
    const b = map.pos.get(e.target);
    if (!a || !b) continue;
    live.add(e.id);
    map.data.set(e.id, e);
    let d = map.edges.get(e.id);
    if (!d) {
      const g = sv('g', { class: 'edge ' + e.verdict, 'data-id': e.id, 'data-verdict': e.verdict, 'data-source': e.source, 'data-target': e.target });
      const path = sv('path', { 'marker-end': `url(#arrow-${e.verdict})` });
      const label = sv('g', { class: 'edge-label', tabindex: 0, role: 'button' });
      const rect = sv('rect', { height: 18 });
      const text = sv('text', { 'dominant-baseline': 'middle' });
      label.append(rect, text);
      g.append(path, label);
      activate(path, () => selectEdge(e.id));
      activate(label, () => selectEdge(e.id));
      layer.append(g);
      d = { g, path, label, rect, text };
      map.edges.set(e.id, d);
    }
    const c = curve(a, b, e.verdict);
    d.path.setAttribute('d', c.d);
    // Allowed edges are the many: a tick says it; the exceptions say their word.
    const what = e.verdict === 'ALLOWED' ? '✓' : `${VERDICT[e.verdict].sym} ${e.verdict}`;
    const words = `${what} ${e.count}${e.rate > 0 ? ` · ${rate(e.rate)}/s` : ''}`;
    d.text.textContent = words;
    const w = words.length * (e.verdict === 'ALLOWED' ? 6.2 : 7) + 12;
    const box = place(placed, c.at, w);
    d.rect.setAttribute('x', box.x);
    d.rect.setAttribute('y', box.y);
    d.rect.setAttribute('width', w);
    d.text.setAttribute('x', box.x + 5);
    d.text.setAttribute('y', box.y + 10);
    d.label.setAttribute('aria-label', `${e.source} to ${e.target}: ${e.verdict}, ${plural(e.count, 'packet')}, ${rate(e.rate)} per second; policies ${[...e.policies].join(', ') || 'none'}`);
    d.g.classList.toggle('selected', e.id === state.edge);
  }
  // The selected edge on top of the others.
  const sel = map.edges.get(state.edge);
  if (sel && layer.lastChild !== sel.g) layer.append(sel.g);
  for (const [id, d] of map.edges) {
    if (!live.has(id)) {
      d.g.remove();
      map.edges.delete(id);
      map.data.delete(id);
    }
  }
}

async function refreshMap() {
  const data = await get('/api/flows?' + nsQuery());
  renderNamespaces(data.namespaces);
  drawMap(data);
  const lost = data.lagged ? ` · ${plural(data.lagged, 'event')} missed under load` : '';
  const since = data.observing_since_ms ? ` since ${new Date(data.observing_since_ms).toLocaleString([], { hour12: false })}` : '';
  status(`live · ${plural(data.edges.length, 'edge')}${since} · updated ${clock(data.time_ms)}${lost}`);
}

async function selectEdge(id) {
  state.edge = id;
  for (const [eid, d] of map.edges) d.g.classList.toggle('selected', eid === id);
  await showEdge(id);
  $('#detail').focus();
}

async function showEdge(id) {
  const box = $('#detail');
  let data;
  try {
    data = await get('/api/edge?id=' + encodeURIComponent(id));
  } catch (err) {
    box.replaceChildren(el('h2', {}, 'Flows'), el('p', {}, String(err.message)));
    return;
  }
  const e = data.edge;
  const v = VERDICT[e.verdict];
  const rows = data.flows.map((f) => el('tr', {},
    el('td', {}, f.source), el('td', {}, f.destination),
    el('td', {}, f.protocol + (f.port ? '/' + f.port : '')), el('td', {}, f.direction),
    el('td', {}, String(f.count)), el('td', {}, clock(f.last_ms)), el('td', {}, f.decided)));
  const table = el('table', { class: 'flows' },
    el('thead', {}, el('tr', {}, ...['From', 'To', 'Port', 'Hook', 'Packets', 'Last', 'Decided by'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...rows));
  const policies = [...e.policies];
  const t = data.trace;
  const traceBody = t.error
    ? el('p', {}, t.error)
    : el('div', {}, el('p', {}, `palisade trace --from ${t.flow.source} --to ${t.flow.destination} --port ${t.flow.port} --protocol ${t.flow.protocol}`), el('pre', {}, t.text));
  box.replaceChildren(
    el('h2', {}, `${e.source} → ${e.target}`),
    el('p', { class: 'verdict ' + e.verdict }, el('strong', {}, `${v.sym} ${e.verdict}`),
      `${e.verdict === 'AUDIT' ? ' (would drop)' : ''} · ${plural(e.count, 'packet')} · ${rate(e.rate)}/s · first seen ${clock(e.first_ms)} · last seen ${clock(e.last_ms)}`),
    el('h3', {}, e.verdict === 'ALLOWED' ? 'Allowing policy' : 'Isolating policies'),
    policies.length ? el('ul', { class: 'policies' }, ...policies.map((p) => el('li', {}, p))) : el('p', {}, 'none: the pod is not isolated'),
    el('h3', {}, 'Flows'), table,
    el('h3', {}, 'Trace of the latest flow'), traceBody,
  );
}

// ---- the verdict tail ----

function tailQuery() {
  const f = new FormData($('#tail-filter'));
  const parts = [];
  for (const [k, v] of f.entries()) if (v) parts.push(`${k}=${encodeURIComponent(v)}`);
  return parts.join('&');
}

async function refreshTail() {
  const q = tailQuery();
  const list = $('#tail');
  if (q !== state.tailKey) {
    state.tailKey = q;
    state.tailSeq = 0;
    list.replaceChildren();
  }
  const data = await get(`/api/events?after=${state.tailSeq}&limit=200&${q}`);
  if (q !== state.tailKey) return;
  state.tailSeq = data.seq;
  for (const item of data.events) {
    const ev = item.event;
    const time = ev.time.slice(11, 23);
    list.prepend(el('li', { class: ev.verdict },
      el('span', { class: 'badge ' + ev.verdict }, `${VERDICT[ev.verdict].sym} ${ev.verdict}`),
      el('time', { datetime: ev.time }, time), item.text.replace(/^\S+ /, '')));
  }
  while (list.children.length > 500) list.lastChild.remove();
  if (!list.children.length) list.append(el('li', {}, 'No verdicts yet match these filters.'));
  else if (list.lastChild && !list.lastChild.className) list.lastChild.remove();
}

$('#tail-filter').addEventListener('input', () => refreshTail().catch(fail));
$('#tail-filter').addEventListener('submit', (e) => e.preventDefault());

// ---- the reachability matrix ----

let matrixBusy = false;

async function refreshMatrix(force) {
  const box = $('#matrix');
  if (!force && box.contains(document.activeElement)) return;
  if (matrixBusy) return;
  matrixBusy = true;
  try {
    const f = new FormData($('#matrix-form'));
    const data = await get(`/api/matrix?${nsQuery()}&port=${encodeURIComponent(f.get('port'))}&protocol=${f.get('protocol')}`);
    const head = el('tr', {}, el('th', { scope: 'col' }, 'from ↓ to →'), ...data.pods.map((p) => el('th', { scope: 'col' }, p)));
    const body = data.rows.map((cells, i) => el('tr', {}, el('th', { scope: 'row' }, data.pods[i]), ...cells.map(cell)));
    const note = data.left_out ? el('p', {}, `${data.left_out} more pods left out: select fewer namespaces.`) : '';
    box.replaceChildren(el('table', { class: 'matrix', id: 'matrix-table' },
      el('caption', {}, `${data.protocol}/${data.port}: what policy allows, with the traffic seen on this node`),
      el('thead', {}, head), el('tbody', {}, ...body)), note);
  } finally {
    matrixBusy = false;
  }
}

function cell(c) {
  const o = c.observed;
  const seen = o.allowed + o.dropped + o.audit;
  let text;
  let cls;
  let words;
  if (c.mark === 'dropped') {
    text = `⚠ ${o.dropped + o.audit}`;
    cls = 'dropped';
    words = `dropped in practice (${o.dropped} dropped, ${o.audit} audit)`;
  } else if (c.mark === 'unused') {
    text = '✓ ○';
    cls = 'allow unused';
    words = 'allowed, never used';
  } else if (c.mark === 'used') {
    text = `✓ ${o.allowed}`;
    cls = 'allow';
    words = `allowed, used (${o.allowed} packets)`;
  } else {
    text = '✕';
    cls = 'deny';
    words = 'denied';
  }
  const policy = c.allowed ? 'policy allows' : `policy denies (${c.egress ? '' : 'egress'}${!c.egress && !c.ingress ? ' and ' : ''}${c.ingress ? '' : 'ingress'})`;
  const label = `${c.from} to ${c.to}: ${policy}; ${words}${seen ? '' : ''}`;
  const td = el('td', { class: 'cell ' + cls, tabindex: 0, role: 'button', title: label, 'aria-label': label,
    'data-from': c.from, 'data-to': c.to, 'data-allowed': c.allowed, 'data-mark': c.mark }, text);
  activate(td, () => traceCell(c));
  return td;
}

async function traceCell(c) {
  const f = new FormData($('#matrix-form'));
  const box = $('#matrix-trace');
  const q = `from=${encodeURIComponent(c.from)}&to=${encodeURIComponent(c.to)}&port=${encodeURIComponent(f.get('port'))}&protocol=${f.get('protocol')}`;
  try {
    const t = await get('/api/trace?' + q);
    box.replaceChildren(el('h3', {}, `palisade trace --from ${c.from} --to ${c.to} --port ${f.get('port')} --protocol ${f.get('protocol')}`), el('pre', {}, t.text));
  } catch (err) {
    box.replaceChildren(el('p', {}, String(err.message)));
  }
}

$('#matrix-form').addEventListener('submit', (e) => {
  e.preventDefault();
  refreshMatrix(true).catch(fail);
});

// ---- policies ----

async function loadPods() {
  const data = await get('/api/cluster');
  $('#node').textContent = 'node ' + data.node;
  const ids = data.pods.map((p) => p.id);
  if (ids.join() === state.pods.join()) return;
  state.pods = ids;
  const select = $('#pod-select');
  const current = select.value;
  const groups = new Map();
  for (const p of data.pods) {
    const ns = p.id.split('/')[0];
    if (!groups.has(ns)) groups.set(ns, el('optgroup', { label: ns }));
    groups.get(ns).append(el('option', { value: p.id }, `${p.id} (${p.workload})`));
  }
  select.replaceChildren(el('option', { value: '' }, 'choose a pod'), ...groups.values());
  select.value = ids.includes(current) ? current : '';
}

$('#pod-select').addEventListener('change', () => showPod($('#pod-select').value).catch(fail));

async function openPod(id) {
  show('policies');
  await loadPods();
  $('#pod-select').value = id;
  await showPod(id);
  $('#pod-select').focus();
}

async function showPod(id) {
  const box = $('#pod-detail');
  if (!id) {
    box.replaceChildren();
    return;
  }
  const p = await get('/api/pod?pod=' + encodeURIComponent(id));
  const labels = Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
  const side = (name, d) => el('div', {},
    el('h3', {}, `${name}: ${d.isolated ? 'isolated' : 'not isolated (everything allowed)'}`),
    ...d.policies.map((pol) => el('div', {},
      el('h4', {}, pol.policy),
      pol.rules.length ? '' : el('p', {}, `selects it for ${name.toLowerCase()} with no rules: allows nothing`),
      ...pol.rules.map((r) => el('div', { class: 'rule' }, r.text,
        el('div', { class: 'admits' }, r.admits.length
          ? `admits ${r.admits.join(', ')}${r.admits_more ? ` and ${r.admits_more} more` : ''}`
          : 'admits no known pod (addresses only)'))))));
  box.replaceChildren(
    el('h2', {}, `${p.pod} (${p.workload})`),
    el('p', {}, `node ${p.node || '-'} · ${p.ips.join(', ') || 'no address'} · ${p.state || 'not on this node'} · labels ${labels}`),
    el('p', {}, p.selected_by.length ? `selected by ${p.selected_by.join(', ')}` : 'no policy selects it'),
    el('div', { class: 'columns' }, side('Ingress', p.ingress), side('Egress', p.egress)));
}

// ---- the loop ----

function fail(err) {
  status('agent unreachable: ' + err.message, true);
}

async function refreshAll() {
  try {
    if (state.view === 'map') {
      await refreshMap();
      if (state.edge && !$('#detail').contains(document.activeElement)) await showEdge(state.edge);
    } else if (state.view === 'verdicts') await refreshTail();
    else if (state.view === 'matrix') await refreshMatrix(false);
    else if (state.view === 'policies') await loadPods();
  } catch (err) {
    fail(err);
  }
}

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.edge) {
    const id = state.edge;
    state.edge = null;
    for (const d of map.edges.values()) d.g.classList.remove('selected');
    const d = map.edges.get(id);
    if (d) d.label.focus();
  }
});

let ticks = 0;
setInterval(() => {
  ticks += 1;
  // The map and the tail every half second; the matrix and an open edge's
  // trace every two.
  if (state.view === 'map') refreshMap().catch(fail);
  if (state.view === 'verdicts') refreshTail().catch(fail);
  if (ticks % 4 === 0) {
    if (state.view === 'map' && state.edge && !$('#detail').contains(document.activeElement)) showEdge(state.edge).catch(fail);
    if (state.view === 'matrix') refreshMatrix(false).catch(fail);
  }
}, 500);

loadPods().catch(fail);
refreshAll();
