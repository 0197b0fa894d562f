// The status page: polls GET /v1/status (every second) and GET /v1/history (every two seconds),
// renders the device, the models and the history, and drives the acting routes.

import { fmtMiB } from './chart.js';
import { api, explain, say, dismiss } from './util.js';
import {
  bindView, catalog, device, render, renderHistory, renderModels, setConnection, showToken,
} from './view.js';

const STATUS_EVERY_MS = 1000;
const HISTORY_EVERY_MS = 2000;
const FULL_HISTORY_EVERY_MS = 60_000;

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'vramkeeper-token';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? '',
  status: null,
  statusAt: 0,
  windowS: 900,
  history: { samples: [], switches: [], remediations: [] },
  historyFullAt: 0,
  historyGen: 0,
  switching: new Set(),
  remediating: false,
  testLoad: null,
};

const call = (method, path, body) => api(method, path, body, state.token);

// ---------------------------------------------------------------------------------------------
// Polling

async function pollStatus() {
  const res = await call('GET', '/v1/status');
  if (res.ok) {
    const first = !state.status;
    state.status = res.data;
    state.serverTime = res.serverTime;
    if (first) loadFullHistory(); // it needs the agent's start time
    state.statusAt = Date.now();
    setConnection('live', 'live');
    dismiss('status');
    render();
  } else if (res.status === 401) {
    state.needsToken = true;
    showToken(true);
    setConnection('down', 'token needed');
    say('error', 'This agent needs its token even to read its status: enter it in the “Agent token” field.', 'status');
  } else {
    setConnection(Date.now() - state.statusAt < 10_000 ? 'stale' : 'down', 'no answer');
  }
}

function mergeByAt(into, more) {
  const seen = new Set(into.map((r) => r.at));
  for (const r of more) if (!seen.has(r.at)) into.push(r);
}

/** The whole window. The agent serves its fine (1 s) samples only for windows within the
 *  fine ring's span, so the fine part is asked for separately and merged after the coarse. */
async function loadFullHistory() {
  const gen = state.historyGen;
  const w = state.windowS;
  const coarse = await call('GET', `/v1/history?window=${w}`);
  if (!coarse.ok || gen !== state.historyGen) return;
  let { samples } = coarse.data;
  const started = Date.parse(state.status?.agent.started_at ?? '');
  if (w <= 3600 && coarse.serverTime && started) {
    // Within the agent's lifetime, by its own clock (the Date header; 1 s resolution).
    const fineW = Math.min(w - 5, Math.floor((coarse.serverTime - started) / 1000) - 2);
    if (fineW >= 2) {
      const fine = await call('GET', `/v1/history?window=${fineW}`);
      if (fine.ok && fine.data.samples.length && gen === state.historyGen) {
        const first = fine.data.samples[0].t_ms;
        samples = samples.filter((s) => s.t_ms < first).concat(fine.data.samples);
      }
    }
  }
  if (gen !== state.historyGen) return;
  state.history = { samples, switches: coarse.data.switches, remediations: coarse.data.remediations };
  state.historyFullAt = Date.now();
  renderHistory();
}

async function pollHistory() {
  if (!state.status) return;
  const h = state.history;
  const last = h.samples[h.samples.length - 1];
  if (!last || Date.now() - state.historyFullAt > FULL_HISTORY_EVERY_MS) {
    await loadFullHistory();
    return;
  }
  const gen = state.historyGen;
  // The agent answers a window longer than its life with one sample a minute: stay within it.
  const age = Math.floor((state.serverTime - Date.parse(state.status.agent.started_at)) / 1000) - 1;
  const res = await call('GET', `/v1/history?window=${Math.max(1, Math.min(10, Number.isFinite(age) ? age : 10))}`);
  if (!res.ok || gen !== state.historyGen) return;
  // After missed polls (a hidden tab) this leaves a hole until the next full load fills it.
  h.samples.push(...res.data.samples.filter((s) => s.t_ms > last.t_ms));
  mergeByAt(h.switches, res.data.switches);
  mergeByAt(h.remediations, res.data.remediations);
  const newest = h.samples[h.samples.length - 1]?.t_ms ?? 0;
  const from = newest - state.windowS * 1000;
  h.samples = h.samples.filter((s) => s.t_ms >= from);
  renderHistory();
}

function every(ms, fn) {
  const tick = async () => {
    try {
      await fn();
    } finally {
      setTimeout(tick, ms);
    }
  };
  tick();
}

// ---------------------------------------------------------------------------------------------
// Actions

async function onModelButton(model) {
  if (state.switching.size > 0 || state.testLoad?.running) return;
  const d = device();
  const m = d?.models.find((x) => x.name === model);
  const unload = m?.state === 'Loaded';
  state.switching.add(model);
  render();
  const res = unload
    ? await call('POST', '/v1/models/unload', {})
    : await call('POST', '/v1/models/switch', { model });
  state.switching.delete(model);
  if (res.ok && unload) {
    const r = res.data.release;
    say('ok', r ? `Unloaded ${r.model}: ${fmtMiB(r.before_mb - r.after_mb)} came back${r.verified ? ' (verified)' : ', but the release was NOT verified'}.` : 'Nothing was loaded.', 'switch');
  } else if (res.ok) {
    const s = res.data;
    say('ok', s.already_active ? `${s.to} was already loaded.`
      : `Switched ${s.from ? `${s.from} → ` : 'to '}${s.to}: ${fmtMiB(s.vram_mb)} VRAM, ${fmtMiB(s.ram_mb)} RAM, loaded in ${Math.round(s.load_ms)} ms.`, 'switch');
  } else {
    onError(res, unload ? `Unloading ${model}` : `Switching to ${model}`, 'switch');
  }
  await pollStatus();
}

function onError(res, what, key) {
  if (res.status === 401) {
    state.needsToken = true;
    showToken(true);
    const form = $('token-form');
    form.classList.add('attention');
    $('token-input').focus();
  }
  say('error', explain(res, what, Boolean(state.token)), res.status === 401 ? 'auth' : key);
}

async function remediate(action) {
  if (state.remediating) return;
  state.remediating = true;
  document.querySelectorAll('[data-action]').forEach((b) => b.setAttribute('aria-disabled', 'true'));
  const res = await call('POST', `/v1/gpu/${action}`, {});
  state.remediating = false;
  document.querySelectorAll('[data-action]').forEach((b) => b.setAttribute('aria-disabled', 'false'));
  if (res.ok) {
    const r = res.data;
    let text = action === 'reset' ? 'GPU reset done' : 'Free VRAM done';
    text += `: used ${fmtMiB(r.used_before_mb)} → ${fmtMiB(r.used_after_mb)}, ghost ${fmtMiB(r.ghost_before_mb)} → ${fmtMiB(r.ghost_after_mb)}`;
    if (r.killed.length) text += `; ended ${r.killed.map((k) => `${k.name} (PID ${k.pid}, ${fmtMiB(k.mb)})`).join(', ')}`;
    if (r.spared.length) text += `; left alone: ${r.spared.map((s) => `${s.name ?? s.kind} (PID ${s.pid}${s.reason ? `: ${s.reason}` : ''})`).join(', ')}`;
    if (r.reloaded) text += `; reloaded ${r.reloaded}`;
    if (r.at_baseline === false) text += '; memory did NOT return to the baseline';
    const freedNothing = action === 'free' && !r.killed.length && r.cleaned_mb < 1
      && r.ghost_after_mb > r.ghost_before_mb - 1 && r.ghost_before_mb >= 1;
    if (freedNothing) {
      say('error', `Free VRAM freed nothing: ghost ${fmtMiB(r.ghost_before_mb)} → ${fmtMiB(r.ghost_after_mb)}.`
        + `${r.spared.length ? ` Left alone: ${r.spared.map((s) => `${s.name ?? s.kind} (PID ${s.pid}${s.reason ? `: ${s.reason}` : ''})`).join(', ')}.` : ''}`
        + ' Reset GPU stops every worker and waits for the memory to come back.', 'remediate');
    } else {
      say(r.at_baseline === false ? 'error' : 'ok', `${text}.`, 'remediate');
    }
  } else {
    onError(res, action === 'reset' ? 'Reset GPU' : 'Free VRAM', 'remediate');
  }
  await pollStatus();
}

function confirmReset() {
  if (state.remediating) return;
  const dialog = $('reset-dialog');
  dialog.returnValue = '';
  dialog.showModal();
  dialog.addEventListener('close', () => {
    if (dialog.returnValue === 'confirm') remediate('reset');
  }, { once: true });
}

function setTestRow(model, entry) {
  state.testLoad.rows.set(model, entry);
  const d = device();
  if (d) renderModels(d);
}

async function testLoad() {
  if (state.testLoad?.running) return;
  const button = $('test-load');
  let models = catalog();
  let previous = device()?.active_model ?? null;
  if (!models.length) {
    const res = await call('GET', '/v1/status');
    if (!res.ok) return onError(res, 'Test Load', 'test-load');
    models = res.data.devices[0].models.map((m) => m.name);
    previous = res.data.devices[0].active_model;
  }
  state.testLoad = { running: true, rows: new Map(models.map((m) => [m, { state: 'pending' }])) };
  button.setAttribute('aria-disabled', 'true');
  button.textContent = '⚡ Testing…';
  let failed = 0;
  let stopped = false;
  for (const model of models) {
    if (stopped) {
      setTestRow(model, { state: 'skipped' });
      continue;
    }
    setTestRow(model, { state: 'running' });
    const res = await call('POST', '/v1/models/switch', { model, trigger: 'test-load' });
    if (res.ok) {
      setTestRow(model, { state: 'done', vram: res.data.vram_mb, ram: res.data.ram_mb, loadMs: res.data.load_ms });
    } else {
      failed += 1;
      setTestRow(model, { state: 'error', error: res.error.code === 'busy' ? 'device busy' : res.error.message });
      if (res.status === 401 || res.status === 0) {
        stopped = true;
        onError(res, 'Test Load', 'test-load');
      }
    }
    pollStatus();
  }
  if (!stopped) {
    const res = previous
      ? await call('POST', '/v1/models/switch', { model: previous, trigger: 'test-load' })
      : await call('POST', '/v1/models/unload', { trigger: 'test-load' });
    const measured = [...state.testLoad.rows].filter(([, e]) => e.state === 'done')
      .map(([m, e]) => `${m} ${fmtMiB(e.vram)}`).join(', ');
    const restored = previous ? `${previous} is active again` : 'nothing is loaded again';
    if (res.ok) {
      say(failed ? 'error' : 'ok', `Test Load: ${models.length - failed} of ${models.length} models measured`
        + `${measured ? ` (${measured})` : ''}; ${restored}.`, 'test-load');
    } else {
      onError(res, previous ? `Test Load could not switch back to ${previous}` : 'Test Load could not unload the last model', 'test-load');
    }
  }
  state.testLoad.running = false;
  button.setAttribute('aria-disabled', 'false');
  button.textContent = '⚡ Test Load';
  await pollStatus();
}

function selectWindow(button, focus) {
  const buttons = [...document.querySelectorAll('#window-picker [role="radio"]')];
  for (const b of buttons) {
    const on = b === button;
    b.setAttribute('aria-checked', String(on));
    b.tabIndex = on ? 0 : -1;
  }
  if (focus) button.focus();
  state.windowS = Number(button.dataset.window);
  state.historyGen += 1;
  state.history = { samples: [], switches: [], remediations: [] };
  renderHistory();
  loadFullHistory();
}

function wire() {
  document.querySelectorAll('[data-action="free"]').forEach((b) => b.addEventListener('click', () => remediate('free')));
  document.querySelectorAll('[data-action="reset"]').forEach((b) => b.addEventListener('click', confirmReset));
  $('test-load').addEventListener('click', testLoad);
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('token-input').value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $('token-input').value = '';
    $('token-form').classList.remove('attention');
    dismiss('auth');
    say('info', state.token ? 'Token saved for this tab; acting buttons will send it.' : 'Token cleared.', 'token');
    showToken(true);
    pollStatus();
  });
  const picker = $('window-picker');
  picker.addEventListener('click', (ev) => {
    const b = ev.target.closest('[role="radio"]');
    if (b) selectWindow(b, false);
  });
  picker.addEventListener('keydown', (ev) => {
    const buttons = [...picker.querySelectorAll('[role="radio"]')];
    const i = buttons.indexOf(document.activeElement);
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[ev.key];
    if (i < 0 || !step) return;
    ev.preventDefault();
    selectWindow(buttons[(i + step + buttons.length) % buttons.length], true);
  });
  let resizeTimer;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderHistory, 100);
  });
}

bindView(state, onModelButton);
wire();
showToken(Boolean(state.token));
every(STATUS_EVERY_MS, pollStatus);
every(HISTORY_EVERY_MS, pollHistory);
