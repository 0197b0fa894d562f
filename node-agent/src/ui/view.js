// Rendering: the header, the device panel, the zombie banner, the models table and the
// chart's legend, from the latest status. Rows are updated in place, so that focus and the
// buttons survive the once-a-second refresh.

import { renderChart, modelColor, fmtMiB, BASELINE_COLOR, GHOST_COLOR } from './chart.js';
import { timeAgo, clock } from './util.js';

const $ = (id) => document.getElementById(id);

let state;
let onModelButton;

/** Connects the view to the page's state and the model buttons' handler. */
export function bindView(pageState, modelButtonHandler) {
  state = pageState;
  onModelButton = modelButtonHandler;
}

export function device() {
  return state.status?.devices?.[0] ?? null;
}

export function catalog() {
  return device()?.models.map((m) => m.name) ?? [];
}

function renderHeader(st) {
  const d = st.devices[0];
  const parts = [d ? `${d.name} (${d.backend})` : 'no device', `agent ${st.agent.version}`];
  if (st.agent.node) parts.unshift(`node ${st.agent.node}`);
  const info = $('agent-info');
  info.textContent = parts.join(' · ');
  info.title = st.agent.device_reason;
  showToken(st.agent.auth_required || state.needsToken);
}

export function showToken(show) {
  const form = $('token-form');
  form.hidden = !show;
  const s = $('token-state');
  s.textContent = state.token ? 'token set' : 'not set';
  s.classList.toggle('set', Boolean(state.token));
}

export function setText(id, text) {
  const e = $(id);
  if (e.textContent !== text) e.textContent = text;
}

export function renderDevice(d) {
  const mem = d.memory;
  const loaded = d.models.filter((m) => m.state === 'Loaded');
  // What the models should use (their figures after load): growth beyond it is ghost.
  const expected = (m) => m.expected_mb ?? m.vram_mb ?? 0;
  const modelsMb = loaded.reduce((a, m) => a + expected(m), 0);
  setText('used', fmtMiB(mem.used_mb));
  setText('total', fmtMiB(mem.total_mb));
  setText('baseline', fmtMiB(mem.baseline_mb));
  setText('models-mb', fmtMiB(modelsMb));
  setText('ghost', fmtMiB(d.ghost.total_mb));
  setText('free', fmtMiB(mem.free_mb));
  $('ghost').classList.toggle('bad', d.zombie.flagged);

  const bar = $('membar');
  const parts = [['baseline', mem.baseline_mb, BASELINE_COLOR]];
  for (const m of loaded) parts.push([m.name, expected(m), modelColor(m.name, catalog())]);
  parts.push(['ghost', d.ghost.total_mb, GHOST_COLOR]);
  bar.replaceChildren(...parts.filter(([, mb]) => mb > 0).map(([name, mb, color]) => {
    const s = document.createElement('span');
    s.style.width = `max(3px, ${((mb / mem.total_mb) * 100).toFixed(3)}%)`;
    s.style.background = color;
    s.title = `${name}: ${fmtMiB(mb)}`;
    return s;
  }));
  bar.setAttribute('aria-label', `device memory: ${fmtMiB(mem.used_mb)} used of ${fmtMiB(mem.total_mb)}`);

  const busy = $('busy');
  busy.hidden = !d.busy;
  busy.textContent = d.busy ? `busy: ${d.busy_with ?? 'working'}` : '';

  const rows = d.ghost.sources.map((src) => {
    const tr = document.createElement('tr');
    const what = document.createElement('td');
    const kind = document.createElement('span');
    kind.className = `kind ${src.kind}`;
    kind.textContent = src.kind.replace('-', ' ');
    what.append(kind, src.name ?? '');
    const pid = document.createElement('td');
    pid.textContent = src.pid ?? '—';
    const mb = document.createElement('td');
    mb.className = 'num';
    mb.textContent = src.mb.toFixed(1);
    tr.append(what, pid, mb);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 3;
    td.className = 'muted';
    td.textContent = d.ghost.total_mb > 0 ? `${fmtMiB(d.ghost.total_mb)}, no holder named` : 'none';
    tr.appendChild(td);
    rows.push(tr);
  }
  $('ghost-sources').replaceChildren(...rows);

  const z = d.zombie;
  setText('zombie-policy', `Zombie memory: ghost over ${fmtMiB(z.threshold_mb)} for ${z.persist_seconds} s. `
    + `Automatic Free VRAM is ${z.auto_free ? 'on' : 'off'}.`
    + (d.probe_error ? ` Memory readings fail (${d.probe_error}); figures are the last good ones.` : ''));
  setText('last-fix', z.last_remediation ? `Last ${describeRemediation(z.last_remediation)}` : '');
  renderBanner(d);
}

function describeRemediation(r) {
  const verb = r.action === 'reset' ? 'reset' : 'free';
  const by = { auto: 'automatic', api: 'by hand', operator: 'by the operator' }[r.trigger] ?? r.trigger;
  let text = `${verb} (${by}) ${clock(r.at)}: ghost ${fmtMiB(r.ghost_before_mb)} → ${fmtMiB(r.ghost_after_mb)}`;
  if (r.cleaned_mb > 0) text += `, ${fmtMiB(r.cleaned_mb)} of pools released`;
  if (r.killed.length) text += `, ended ${r.killed.map((k) => `${k.name} (PID ${k.pid})`).join(', ')}`;
  if (r.reloaded) text += `, reloaded ${r.reloaded}`;
  return `${text}.`;
}

function describeSource(src) {
  const kinds = {
    'zombie-worker': 'a worker that should be gone',
    'orphan-worker': 'a worker of an earlier agent run',
    'foreign-process': 'a process that is no worker of this agent',
    'allocator-cache': 'allocator pools kept by',
    'worker-growth': 'growth since load in',
    unattributed: 'nothing the agent can name',
  };
  const who = [src.name, src.pid != null ? `PID ${src.pid}` : null].filter(Boolean).join(', ');
  return `${fmtMiB(src.mb)}: ${kinds[src.kind] ?? src.kind}${who ? ` ${who}` : ''}`;
}

function renderBanner(d) {
  const z = d.zombie;
  const banner = $('zombie-banner');
  banner.hidden = !z.flagged;
  if (!z.flagged) return;
  setText('zombie-what', `${fmtMiB(d.ghost.total_mb)} of device memory is held by nothing the agent expects `
    + `(threshold ${fmtMiB(z.threshold_mb)}).`);
  $('zombie-sources').replaceChildren(...d.ghost.sources.map((src) => {
    const li = document.createElement('li');
    li.textContent = describeSource(src);
    return li;
  }));
  let when = z.over_threshold_since ? `Over the threshold since ${clock(z.over_threshold_since)} (${timeAgo(z.over_threshold_since)}). ` : '';
  const last = z.last_remediation;
  const ranSince = last && last.trigger === 'auto' && z.over_threshold_since
    && Date.parse(last.at) >= Date.parse(z.over_threshold_since);
  if (!z.auto_free) {
    when += 'Auto-fix is off on this agent: use Free VRAM, or Reset GPU if freeing does not help.';
  } else if (ranSince) {
    when += `Auto-fix ran at ${clock(last.at)} and the memory is still held`;
    when += z.next_auto_free_at ? `; it runs again at ${clock(z.next_auto_free_at)}.` : '.';
  } else if (z.next_auto_free_at && Date.parse(z.next_auto_free_at) > Date.now()) {
    when += `Auto-fix (Free VRAM) will run at ${clock(z.next_auto_free_at)}.`;
  } else {
    when += 'Auto-fix (Free VRAM) runs at the next check.';
  }
  setText('zombie-when', when);
}

const STATE_LABEL = { Loaded: 'Loaded', Unloaded: 'Unloaded', NeverLoaded: 'Never loaded' };
const STATE_CLASS = { Loaded: 'loaded', Unloaded: 'unloaded', NeverLoaded: 'never' };
const COLUMNS = ['Model', 'State', 'VRAM', 'RAM', 'Loads', 'Last switch', 'Test', ''];

function dash() {
  const s = document.createElement('span');
  s.className = 'dash';
  s.textContent = '—';
  return s;
}

function timeEl(iso, prefix) {
  const t = document.createElement('time');
  t.className = 'when';
  t.dateTime = iso;
  t.title = new Date(iso).toLocaleString();
  t.textContent = `${prefix} ${timeAgo(iso)}`;
  return t;
}

function testCell(model) {
  const entry = state.testLoad?.rows.get(model);
  if (!entry) return [];
  const span = document.createElement('span');
  span.className = `test ${entry.state}`;
  const spinner = () => {
    const s = document.createElement('span');
    s.className = 'spinner';
    s.setAttribute('aria-hidden', 'true');
    return s;
  };
  if (entry.state === 'pending') span.append(spinner(), 'queued');
  else if (entry.state === 'running') span.append(spinner(), 'loading…');
  else if (entry.state === 'done') {
    span.append(`✓ ${fmtMiB(entry.vram)}`);
    span.title = `loaded in ${Math.round(entry.loadMs)} ms; RAM ${fmtMiB(entry.ram)}`;
  } else if (entry.state === 'error') span.append(`✗ ${entry.error}`);
  else span.append('skipped');
  return [span];
}

function cells(m) {
  const name = document.createElement('span');
  name.className = 'model-name';
  name.textContent = m.name;
  const kind = document.createElement('span');
  kind.className = 'model-kind';
  kind.textContent = m.kind;
  const nameCell = [name, kind];
  if (m.kind === 'server') {
    // What the model's own server printed: its last lines, also after it failed to start.
    const logs = document.createElement('a');
    logs.className = 'model-logs';
    logs.href = `/v1/models/${encodeURIComponent(m.name)}/logs`;
    logs.target = '_blank';
    logs.rel = 'noopener';
    logs.textContent = 'logs';
    logs.setAttribute('aria-label', `${m.name}: server logs`);
    nameCell.push(logs);
  }

  const badge = document.createElement('span');
  badge.className = 'state';
  badge.textContent = STATE_LABEL[m.state] ?? m.state;

  const never = m.state === 'NeverLoaded';
  const vram = never || m.vram_mb == null ? [dash()] : [fmtMiB(m.vram_mb)];
  if (m.state === 'Unloaded' && m.last_unloaded) vram.push(timeEl(m.last_unloaded, 'unloaded'));
  const ram = never || m.ram_mb == null ? [dash()] : [fmtMiB(m.ram_mb)];
  const loads = never ? [dash()] : [String(m.loads)];
  const last = [];
  if (m.last_trigger) {
    const t = document.createElement('span');
    t.className = 'trigger';
    t.textContent = m.last_trigger;
    last.push(t);
    if (m.last_loaded) last.push(timeEl(m.last_loaded, 'loaded'));
  } else last.push(dash());
  return [nameCell, [badge], vram, ram, loads, last, testCell(m.name)];
}

export function renderModels(d) {
  const body = $('model-rows');
  const keep = new Set();
  for (const m of d.models) {
    keep.add(m.name);
    let tr = body.querySelector(`tr[data-model="${CSS.escape(m.name)}"]`);
    if (!tr) {
      tr = document.createElement('tr');
      tr.dataset.model = m.name;
      COLUMNS.forEach((label, i) => {
        const td = document.createElement('td');
        td.dataset.label = label;
        td.className = ['name-cell', 'state-cell', 'num', 'num', 'num', '', 'test-cell', 'action-cell'][i];
        tr.appendChild(td);
      });
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'btn small';
      button.addEventListener('click', () => onModelButton(m.name));
      tr.lastChild.appendChild(button);
      body.appendChild(tr);
    }
    tr.className = STATE_CLASS[m.state] ?? '';
    tr.dataset.state = m.state;
    tr.dataset.test = state.testLoad?.rows.get(m.name)?.state ?? '';
    cells(m).forEach((content, i) => {
      const wrap = document.createElement('span');
      wrap.className = 'cell';
      wrap.append(...content);
      tr.children[i].replaceChildren(...(content.length ? [wrap] : []));
    });
    const button = tr.lastChild.firstChild;
    const loaded = m.state === 'Loaded';
    const label = loaded ? 'Unload' : 'Load';
    if (button.textContent !== label) button.textContent = label;
    button.setAttribute('aria-label', `${label} ${m.name}`);
    const busy = state.switching.size > 0 || Boolean(state.testLoad?.running);
    button.setAttribute('aria-disabled', String(busy));
    button.classList.toggle('working', state.switching.has(m.name));
  }
  for (const tr of [...body.children]) if (!keep.has(tr.dataset.model)) tr.remove();

  const s = d.last_switch;
  if (s) {
    const what = s.to ? `${s.from ?? 'nothing'} → ${s.to}` : `unloaded ${s.from}`;
    let text = `Last switch ${clock(s.at)}: ${what} (${s.trigger}); unload ${Math.round(s.unload_ms)} ms, load ${Math.round(s.load_ms)} ms`;
    if (s.release_verified != null) text += s.release_verified ? ', release verified' : ', release NOT verified';
    if (s.error) text += `; failed: ${s.error}`;
    setText('last-switch', `${text}.`);
  }
}

function renderLegend() {
  const items = [['baseline', BASELINE_COLOR]];
  for (const name of catalog()) items.push([name, modelColor(name, catalog())]);
  items.push(['ghost', GHOST_COLOR]);
  const lis = items.map(([label, color]) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = 'sw';
    sw.style.background = color;
    li.append(sw, label);
    return li;
  });
  const used = document.createElement('li');
  const line = document.createElement('span');
  line.className = 'line';
  used.append(line, 'used');
  lis.push(used);
  const legend = $('legend');
  if (legend.textContent !== lis.map((l) => l.textContent).join('')) legend.replaceChildren(...lis);
}

export function renderHistory() {
  const h = state.history;
  const last = h.samples[h.samples.length - 1];
  renderLegend();
  const shown = renderChart($('chart'), {
    ...h,
    windowMs: state.windowS * 1000,
    nowMs: last ? last.t_ms : Date.now(),
    catalog: catalog(),
    // The agent's start: the line breaks there (nothing was measured while it was down).
    startedMs: Date.parse(state.status?.agent.started_at ?? ''),
  });
  const since = shown && shown.to - shown.from < state.windowS * 1000 - 5000;
  setText('chart-range', since ? `since ${clock(new Date(shown.from).toISOString())}` : `last ${windowLabel()}`);
  if (last) {
    const models = Object.entries(last.models).map(([k, v]) => `${k} ${fmtMiB(v)}`).join(', ');
    setText('chart-caption', `Device memory over the last ${windowLabel()}: now ${fmtMiB(last.used_mb)} used`
      + ` (baseline ${fmtMiB(last.baseline_mb)}${models ? `, ${models}` : ''}, ghost ${fmtMiB(last.ghost_mb)}).`);
  }
}

function windowLabel() {
  return document.querySelector(`#window-picker [data-window="${state.windowS}"]`)?.textContent ?? `${state.windowS} s`;
}

export function render() {
  const st = state.status;
  if (!st) return;
  renderHeader(st);
  const d = st.devices[0];
  if (!d) return;
  renderDevice(d);
  renderModels(d);
}

export function setConnection(kind, text) {
  const c = $('conn');
  c.className = `conn ${kind}`;
  setText('conn-text', text);
}
