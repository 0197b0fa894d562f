// The VRAM history chart: baseline, each model and ghost memory stacked over time, drawn as SVG
// by hand (no chart library: the page works with no network and nothing to vendor).

const NS = 'http://www.w3.org/2000/svg';
const PALETTE = ['#4e79a7', '#59a14f', '#b07aa1', '#76b7b2', '#9c755f', '#f28e2b', '#edc948', '#ff9da7'];
export const BASELINE_COLOR = '#b8bec9';
export const GHOST_COLOR = '#e15759';

/** A stable colour per model: its index in the catalog, else a hash of its name. */
export function modelColor(name, catalog) {
  let i = catalog.indexOf(name);
  if (i < 0) {
    i = [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7);
  }
  return PALETTE[i % PALETTE.length];
}

/** MiB as a short human figure: "812 MiB", "1.50 GiB". */
export function fmtMiB(mb, digits) {
  if (mb == null || Number.isNaN(mb)) return '—';
  if (mb === 0) return '0 MiB';
  if (Math.abs(mb) >= 1024) return `${(mb / 1024).toFixed(digits ?? 2)} GiB`;
  if (Math.abs(mb) >= 100) return `${Math.round(mb)} MiB`;
  return `${mb.toFixed(digits ?? 1)} MiB`;
}

function el(name, attrs = {}, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function niceStep(span, ticks) {
  const raw = span / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** Y ticks in MiB; in GiB steps once the scale passes 1 GiB. */
function yTicks(max) {
  const gib = max >= 1024;
  const unit = gib ? 1024 : 1;
  const step = niceStep(max / unit, 4) * unit;
  const top = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);
  return { top, ticks };
}

const TIME_STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600].map((s) => s * 1000);

function xTicks(from, to, width) {
  const want = Math.max(2, Math.floor(width / 110));
  const step = TIME_STEPS.find((s) => (to - from) / s <= want) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const offset = new Date().getTimezoneOffset() * 60_000;
  const ticks = [];
  for (let t = Math.ceil((from - offset) / step) * step + offset; t <= to; t += step) ticks.push(t);
  return { ticks, seconds: step < 60_000 };
}

function hhmm(t, seconds) {
  return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: seconds ? '2-digit' : undefined });
}

/** The shortest span the chart shows: a young agent's first minute is not squeezed into a
 *  sliver at the right edge of a day. */
export const MIN_SPAN_MS = 60_000;

/** What the chart stacks for one sample. A model's live figure includes memory it grew or
 *  leaked since load, which the agent already counts as ghost: the models get what is left of
 *  `used` after baseline and ghost (shared in proportion), so the stack adds up to `used`. */
function stacked(s, models) {
  const live = models.map((name) => s.models[name] ?? 0);
  const sum = live.reduce((a, b) => a + b, 0);
  const room = Math.max(0, s.used_mb - s.baseline_mb - s.ghost_mb);
  const scale = sum > room && sum > 0 ? room / sum : 1;
  return { baseline: s.baseline_mb, ghost: s.ghost_mb, models: live.map((v) => v * scale) };
}

/** Splits samples where they are much further apart than their neighbours (the agent was
 *  down): 1 s samples break after a 10 s hole, minute samples after a few minutes. */
/** Markers nearer than this many pixels are drawn as one. */
const MARKER_PX = 6;

function segments(samples, minGapMs, breakAt) {
  const out = [];
  let cur = [];
  let spacing = samples.length > 1 ? samples[1].t_ms - samples[0].t_ms : 0;
  for (const s of samples) {
    const prev = cur[cur.length - 1];
    if (prev) {
      const delta = s.t_ms - prev.t_ms;
      const restarted = prev.t_ms < breakAt && s.t_ms >= breakAt;
      if (restarted || delta > Math.max(minGapMs, 2.5 * spacing)) {
        out.push(cur);
        cur = [];
      }
      spacing = delta;
    }
    cur.push(s);
  }
  if (cur.length) out.push(cur);
  return out;
}

/** Keeps about two samples per pixel column (the day view has thousands). */
function thin(samples, width) {
  const stride = Math.ceil(samples.length / Math.max(1, width * 2));
  if (stride <= 1) return samples;
  return samples.filter((_, i) => i % stride === 0 || i === samples.length - 1);
}

/**
 * Draws the chart into `figure`.
 * data: { samples, switches, remediations, windowMs, nowMs, catalog, startedMs }
 */
export function renderChart(figure, data) {
  const { samples, switches, remediations, windowMs, nowMs, catalog, startedMs } = data;
  figure.querySelector('svg')?.remove();
  const empty = figure.querySelector('.chart-empty');
  const tip = figure.querySelector('.tooltip');
  empty.hidden = samples.length > 0;
  if (!samples.length) return;

  const width = Math.max(280, figure.clientWidth);
  const height = width < 560 ? 220 : 280;
  const m = { l: 62, r: 12, t: 14, b: 26 };
  const w = width - m.l - m.r;
  const h = height - m.t - m.b;
  const to = nowMs;
  const from = Math.max(to - windowMs, Math.min(samples[0].t_ms, to - MIN_SPAN_MS));

  // Stack order bottom-up: baseline, models in catalog order (others after), ghost.
  const names = new Set();
  for (const s of samples) for (const k of Object.keys(s.models)) names.add(k);
  const models = [...names].sort((a, b) => {
    const ia = catalog.indexOf(a);
    const ib = catalog.indexOf(b);
    return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || a.localeCompare(b);
  });
  const stacks = new Map(samples.map((s) => [s, stacked(s, models)]));
  const series = [
    { key: 'baseline', label: 'baseline', color: BASELINE_COLOR, value: (s) => stacks.get(s).baseline },
    ...models.map((name, i) => ({
      key: `model:${name}`,
      label: name,
      color: modelColor(name, catalog),
      value: (s) => stacks.get(s).models[i],
    })),
    { key: 'ghost', label: 'ghost', color: GHOST_COLOR, value: (s) => stacks.get(s).ghost },
  ];

  let max = 0;
  for (const s of samples) {
    const stack = series.reduce((a, sr) => a + sr.value(s), 0);
    max = Math.max(max, stack, s.used_mb);
  }
  const { top, ticks } = yTicks(Math.max(max * 1.1, 1));
  const step = (ticks[1] ?? top) / (top >= 1024 ? 1024 : 1);
  const digits = step >= 1 ? 0 : step >= 0.1 ? 1 : 2;
  const x = (t) => m.l + ((t - from) / (to - from)) * w;
  const y = (v) => m.t + h - (v / top) * h;

  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    'aria-labelledby': 'chart-caption',
  });

  const defs = el('defs', {}, svg);
  const pat = el('pattern', { id: 'ghost-hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' }, defs);
  el('rect', { width: 6, height: 6, fill: GHOST_COLOR, 'fill-opacity': 0.35 }, pat);
  el('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: GHOST_COLOR, 'stroke-width': 3 }, pat);
  const clip = el('clipPath', { id: 'plot-clip' }, defs);
  el('rect', { x: m.l, y: m.t - 2, width: w, height: h + 2 }, clip);

  // Grid and axes.
  const axis = el('g', { class: 'axis' }, svg);
  for (const v of ticks) {
    el('line', { class: 'grid-line', x1: m.l, x2: m.l + w, y1: y(v), y2: y(v) }, axis);
    const label = el('text', { x: m.l - 8, y: y(v) + 4, 'text-anchor': 'end' }, axis);
    label.textContent = v === 0 ? '0' : fmtMiB(v, digits);
  }
  const xt = xTicks(from, to, w);
  for (const t of xt.ticks) {
    el('line', { class: 'grid-line', x1: x(t), x2: x(t), y1: m.t, y2: m.t + h }, axis);
    const label = el('text', { x: x(t), y: m.t + h + 17, 'text-anchor': 'middle' }, axis);
    label.textContent = hhmm(t, xt.seconds);
  }
  el('line', { x1: m.l, x2: m.l + w, y1: m.t + h, y2: m.t + h, stroke: '#9aa1ad' }, axis);

  // Stacked areas, one path per series and segment.
  const plot = el('g', { 'clip-path': 'url(#plot-clip)' }, svg);
  const gap = windowMs > 3_600_000 ? 5 * 60_000 : 10_000;
  for (const seg of segments(thin(samples, w), gap, startedMs)) {
    const base = seg.map(() => 0);
    for (const sr of series) {
      const topLine = seg.map((s, i) => base[i] + sr.value(s));
      if (topLine.some((v, i) => v > base[i])) {
        const up = seg.map((s, i) => `${x(s.t_ms).toFixed(1)},${y(topLine[i]).toFixed(1)}`);
        const down = seg.map((s, i) => `${x(s.t_ms).toFixed(1)},${y(base[i]).toFixed(1)}`).reverse();
        const fill = sr.key === 'ghost' ? 'url(#ghost-hatch)' : sr.color;
        el('path', {
          d: `M${up.join('L')}L${down.join('L')}Z`,
          fill,
          'fill-opacity': sr.key === 'ghost' ? 1 : 0.85,
          stroke: sr.color,
          'stroke-width': 1,
          'data-series': sr.key,
        }, plot);
      }
      topLine.forEach((v, i) => { base[i] = v; });
    }
    const used = seg.map((s) => `${x(s.t_ms).toFixed(1)},${y(s.used_mb).toFixed(1)}`);
    el('path', { d: `M${used.join('L')}`, fill: 'none', stroke: '#1d2330', 'stroke-width': 1.5, 'stroke-dasharray': '4 3' }, plot);
  }

  // Switch and remediation markers. Markers closer than a few pixels merge into one, with a
  // count, so that many switches never hide the chart behind a "barcode".
  const marks = el('g', {}, svg);
  const groups = new Map();
  const mark = (at, color, text, weight) => {
    const t = Date.parse(at);
    if (!(t >= from && t <= to)) return;
    const key = Math.round(x(t) / MARKER_PX);
    const g = groups.get(key) ?? { t, color, weight: -1, texts: [] };
    g.texts.push(text);
    if (weight > g.weight) Object.assign(g, { color, weight });
    groups.set(key, g);
  };
  for (const s of switches) {
    const what = s.to ? `${s.from ?? 'nothing'} → ${s.to}` : `unloaded ${s.from}`;
    mark(s.at, s.error ? '#c62828' : '#5f6877', `${hhmm(Date.parse(s.at), true)} ${what} (${s.trigger})`, s.error ? 2 : 0);
  }
  for (const r of remediations) {
    mark(r.at, r.action === 'reset' ? '#c62828' : '#e08a00',
      `${hhmm(Date.parse(r.at), true)} ${r.action} (${r.trigger}): ghost ${fmtMiB(r.ghost_before_mb)} → ${fmtMiB(r.ghost_after_mb)}`, 1);
  }
  for (const g of groups.values()) {
    const node = el('g', { 'data-marks': g.texts.length }, marks);
    el('line', { class: 'marker', x1: x(g.t), x2: x(g.t), y1: m.t, y2: m.t + h, stroke: g.color }, node);
    el('circle', { cx: x(g.t), cy: m.t, r: g.texts.length > 1 ? 5 : 4, fill: g.color }, node);
    if (g.texts.length > 1) {
      const n = el('text', { x: x(g.t), y: m.t + 3, 'text-anchor': 'middle', class: 'marker-count' }, node);
      n.textContent = g.texts.length > 9 ? '+' : String(g.texts.length);
    }
    const shown = g.texts.slice(0, 12);
    if (g.texts.length > shown.length) shown.push(`… and ${g.texts.length - shown.length} more`);
    el('title', {}, node).textContent = shown.join('\n');
  }

  // Hover: a cursor line and the figures of the nearest sample.
  const cursor = el('line', { x1: 0, x2: 0, y1: m.t, y2: m.t + h, stroke: '#1d2330', 'stroke-width': 1, visibility: 'hidden' }, svg);
  const hit = el('rect', { x: m.l, y: m.t, width: w, height: h, fill: 'transparent' }, svg);
  const nearest = (t) => {
    let lo = 0;
    let hi = samples.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (samples[mid].t_ms < t) lo = mid + 1; else hi = mid;
    }
    if (lo > 0 && t - samples[lo - 1].t_ms < samples[lo].t_ms - t) lo -= 1;
    return samples[lo];
  };
  hit.addEventListener('pointermove', (ev) => {
    const box = svg.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * width;
    const s = nearest(from + ((px - m.l) / w) * (to - from));
    cursor.setAttribute('x1', x(s.t_ms));
    cursor.setAttribute('x2', x(s.t_ms));
    cursor.setAttribute('visibility', 'visible');
    tip.replaceChildren();
    const head = document.createElement('div');
    head.className = 't';
    head.textContent = new Date(s.t_ms).toLocaleTimeString();
    tip.appendChild(head);
    const rows = [['used', s.used_mb], ...series.slice().reverse().map((sr) => [sr.label, sr.value(s)])];
    for (const [label, v] of rows) {
      if (label !== 'used' && label !== 'baseline' && label !== 'ghost' && !v) continue;
      const row = document.createElement('div');
      row.className = 'row';
      const a = document.createElement('span');
      a.textContent = label;
      const b = document.createElement('span');
      b.textContent = fmtMiB(v);
      row.append(a, b);
      tip.appendChild(row);
    }
    tip.hidden = false;
    const left = (x(s.t_ms) / width) * box.width;
    tip.style.left = `${Math.min(left + 12, box.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${m.t + 8}px`;
  });
  hit.addEventListener('pointerleave', () => {
    cursor.setAttribute('visibility', 'hidden');
    tip.hidden = true;
  });

  figure.insertBefore(svg, figure.firstChild);
  return { from, to };
}
