// The board (B-3): polls /board/data and draws tasks by stage. No library,
// no build step. Everything from the server goes in through textContent,
// never as HTML: titles, comments and reasons are other people's text.
'use strict';

const POLL_MS = 2000;
let data = null;
let openItem = null;
let pollTimer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function usd(v) {
  return '$' + (Number(v) || 0).toFixed(2);
}

function showError(msg) {
  const e = $('error');
  e.textContent = msg || '';
  e.hidden = !msg;
}

// An action is an admin route; the session cookie goes along by itself,
// the CSRF token must be sent by us (the server refuses it otherwise).
async function post(url, body) {
  const headers = { 'X-CSRF-Token': (data && data.csrf) || '' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url, {
    method: 'POST',
    credentials: 'same-origin',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!res.ok) {
    throw new Error(`${res.status}: ${(json && json.error) || text || res.statusText}`);
  }
  return json;
}

async function act(what, fn) {
  showError('');
  try {
    await fn();
    $('status').textContent = what;
  } catch (e) {
    showError(`${what} failed: ${e.message}`);
  }
  poll();
}

function setStatus(item, status, label) {
  return act(`${label}: ${item}`, () =>
    post(`/items/${encodeURIComponent(item)}/status`, { status }));
}

function gateButton(t, g) {
  return el('button', {
    type: 'button',
    class: `gate gate-${g.action}`,
    'data-action': g.action,
    'data-work-item': t.work_item,
    onclick: (ev) => {
      ev.stopPropagation();
      if (g.needs_reason) {
        openDetails(t.work_item);
        const f = $('reject-form');
        f.hidden = false;
        f.dataset.status = g.status || '';
        f.elements.reason.focus();
        return;
      }
      if (g.action === 'stop' && !window.confirm(`STOP ${t.work_item}? The task is cancelled.`)) {
        return;
      }
      setStatus(t.work_item, g.status, g.label);
    },
  }, g.label);
}

function leaseButton(t) {
  return el('button', {
    type: 'button',
    class: 'release',
    'data-action': 'release-lease',
    'data-work-item': t.work_item,
    onclick: (ev) => {
      ev.stopPropagation();
      const q = new URLSearchParams({ work_item: t.work_item, holder: t.lease.holder });
      act(`lease released: ${t.work_item}`, () => post(`/transition-lease/release?${q}`));
    },
  }, 'Release lease');
}

function card(t) {
  const facts = el('ul', { class: 'facts' },
    t.running ? el('li', { class: 'running' }, `🔄 ${t.running} running`) : null,
    el('li', { class: 'runs' }, `${t.runs} run${t.runs === 1 ? '' : 's'}`),
    el('li', { class: 'cost' }, usd(t.cost_usd)),
    t.lease ? el('li', { class: 'lease', title: t.lease.holder },
      `🔒 ${t.lease.actor} · ${t.lease.transition}`) : null,
    t.hold_reason ? el('li', { class: 'hold' }, `⏸ ${t.hold_reason}`) : null,
    t.cancel_requested ? el('li', { class: 'stop' }, '⛔ STOP requested') : null,
    t.merge_commit ? el('li', { class: 'merge' }, `merged ${t.merge_commit.slice(0, 12)}`) : null,
  );
  const actions = el('div', { class: 'actions' });
  if (data.signed_in) {
    if (t.local) for (const g of t.gates) actions.append(gateButton(t, g));
    if (t.lease) actions.append(leaseButton(t));
  }
  return el('article', {
    class: `card${openItem === t.work_item ? ' open' : ''}`,
    'data-work-item': t.work_item,
    'data-stage': t.stage,
    tabindex: '0',
    onclick: () => openDetails(t.work_item),
  },
  el('h3', {}, el('span', { class: 'wi' }, t.work_item), ' ', t.title),
  el('p', { class: 'project' }, t.project),
  facts,
  actions.childElementCount ? actions : null);
}

function render() {
  const board = $('board');
  const byStage = new Map(data.stages.map((s) => [s.name, []]));
  for (const t of data.tasks) {
    if (!byStage.has(t.stage)) byStage.set(t.stage, []);
    byStage.get(t.stage).push(t);
  }
  const columns = data.stages.map((s) => el('section', {
    class: 'column',
    'data-stage': s.name,
  },
  el('h2', {}, s.label, ' ', el('span', { class: 'count' }, String(byStage.get(s.name).length))),
  ...byStage.get(s.name).map(card)));
  board.replaceChildren(...columns);

  $('sign-in').hidden = data.signed_in;
  $('signed-in').hidden = !data.signed_in;
  const local = data.projects.filter((p) => p.local);
  $('new-item').hidden = !(data.signed_in && local.length);
  const sel = $('new-item-form').elements.project;
  const names = local.map((p) => p.name).join('\n');
  if (sel.dataset.names !== names) {
    sel.replaceChildren(...local.map((p) => el('option', { value: p.name }, `${p.name} (${p.prefix})`)));
    sel.dataset.names = names;
  }
  const when = new Date(data.generated_at).toLocaleTimeString();
  $('status').textContent = `${data.tasks.length} tasks · updated ${when}`;
  if (openItem) fillDetails();
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const res = await fetch('/board/data', { cache: 'no-store', credentials: 'same-origin' });
    if (!res.ok) throw new Error(`${res.status}`);
    data = await res.json();
    render();
  } catch (e) {
    $('status').textContent = `daemon unreachable (${e.message}); retrying`;
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

function task(item) {
  return data && data.tasks.find((t) => t.work_item === item);
}

function openDetails(item) {
  if (openItem !== item) {
    $('reject-form').hidden = true;
    $('reject-form').reset();
    $('comment-form').reset();
  }
  openItem = item;
  $('details').hidden = false;
  fillDetails();
  loadArtifacts(item);
  loadComments(item);
}

function fillDetails() {
  const t = task(openItem);
  if (!t) {
    $('details-title').textContent = `${openItem} (no longer on the board)`;
    return;
  }
  $('details-title').textContent = `${t.work_item} · ${t.title}`;
  $('details-card').textContent = t.card;
  $('comments').hidden = !t.local;
  $('comment-form').hidden = !(t.local && data.signed_in);
  if (!t.gates.some((g) => g.needs_reason) || !data.signed_in) $('reject-form').hidden = true;
}

async function loadArtifacts(item) {
  const ul = $('details-artifacts');
  ul.replaceChildren(el('li', {}, 'loading…'));
  try {
    const res = await fetch(`/board/artifacts/${encodeURIComponent(item)}`, { cache: 'no-store' });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.status);
    const items = body.files.map((f) => el('li', {}, el('a', {
      href: `/board/artifacts/${encodeURIComponent(item)}/${f.split('/').map(encodeURIComponent).join('/')}`,
      target: '_blank',
      rel: 'noopener',
    }, f)));
    for (const [f, why] of Object.entries(body.refused || {})) {
      items.push(el('li', { class: 'refused' }, `${f}: ${why}`));
    }
    ul.replaceChildren(...(items.length ? items : [el('li', {}, 'none yet')]));
  } catch (e) {
    ul.replaceChildren(el('li', {}, `no artifacts (${e.message})`));
  }
}

// Comments live with the local tracker's work item (GET /items/<id>).
async function loadComments(item) {
  const t = task(item);
  const ul = $('details-comments');
  if (!t || !t.local) return;
  try {
    const res = await fetch(`/items/${encodeURIComponent(item)}`, { cache: 'no-store' });
    if (!res.ok) throw new Error(res.status);
    const body = await res.json();
    const list = body.comments || [];
    ul.replaceChildren(...(list.length ? list.map((c) => el('li', {},
      c.author ? el('b', {}, `${c.author}: `) : null, c.text ?? c.body ?? '')) : [el('li', {}, 'none')]));
  } catch (e) {
    ul.replaceChildren(el('li', {}, `comments unavailable (${e.message})`));
  }
}

function wire() {
  $('details-close').addEventListener('click', () => {
    openItem = null;
    $('details').hidden = true;
  });
  $('sign-out').addEventListener('click', () => act('signed out', () => post('/board/sign-out')));
  $('new-item-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = { project: f.project.value, title: f.title.value.trim(), description: f.description.value };
    act(`new work item in ${body.project}`, async () => {
      const made = await post('/items', body);
      ev.target.reset();
      const id = made && (made.work_item || made.id);
      if (id) $('status').textContent = `created ${id}`;
    });
  });
  $('reject-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const item = openItem;
    const status = ev.target.dataset.status;
    const reason = ev.target.elements.reason.value.trim();
    // The pipeline reads the reason from the newest comment (SPEC step 2).
    act(`rejected ${item}`, async () => {
      await post(`/items/${encodeURIComponent(item)}/comments`, { text: reason });
      await post(`/items/${encodeURIComponent(item)}/status`, { status });
      ev.target.reset();
      ev.target.hidden = true;
      loadComments(item);
    });
  });
  $('comment-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const item = openItem;
    const text = ev.target.elements.text.value.trim();
    act(`comment on ${item}`, async () => {
      await post(`/items/${encodeURIComponent(item)}/comments`, { text });
      ev.target.reset();
      loadComments(item);
    });
  });
}

document.addEventListener('DOMContentLoaded', () => {
  wire();
  poll();
});
