// What the page's parts share: calling the agent, explaining its errors, messages, and times.

/**
 * Calls the agent. Never throws: answers { ok, status, data, serverTime, error: { code, message } },
 * with status 0 when the agent did not answer at all. `serverTime` (ms, from the Date header)
 * is the agent's clock, which need not agree with the browser's.
 */
export async function api(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    return { ok: false, status: 0, error: { code: 'network', message: String(e.message ?? e) } };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  const serverTime = Date.parse(response.headers.get('Date') ?? '');
  if (response.ok) return { ok: true, status: response.status, data, serverTime };
  const error = data?.error ?? { code: `http_${response.status}`, message: response.statusText || 'no details' };
  return { ok: false, status: response.status, data, error };
}

/** A sentence for a failed call: what was refused, why, and what to do about it. */
export function explain(res, what, haveToken) {
  const msg = res.error?.message ?? '';
  switch (res.status) {
    case 0:
      return `${what} failed: the agent did not answer (${msg}). Is it running?`;
    case 401:
      return haveToken
        ? `${what} was refused: the agent did not accept the token. Check it in the “Agent token” field and try again.`
        : `${what} needs the agent's token. Enter it in the “Agent token” field at the top, then try again.`;
    case 409:
      return `${what} was refused because the device is busy: ${msg.replace(/^device \d+ is busy: /, '').replace(/; retry when it is done\.?$/, '')}. Try again when it is done.`;
    case 404:
      return `${what} failed: ${msg}.`;
    case 422:
    case 400:
      return `${what} was rejected: ${msg}.`;
    case 429:
      return `${what} was refused: ${msg}.`;
    default:
      return `${what} failed (HTTP ${res.status}): ${msg}.`;
  }
}

const AUTO_DISMISS_MS = { ok: 8_000, info: 5_000, error: 30_000 };

/** Shows a message; one with the same key (the same action) replaces the earlier one. */
export function say(kind, text, key) {
  const box = document.getElementById('messages');
  if (key) dismiss(key);
  const div = document.createElement('div');
  div.className = `msg ${kind}`;
  if (key) div.dataset.key = key;
  const p = document.createElement('p');
  p.textContent = text.replace(/\.\.$/, '.');
  const close = document.createElement('button');
  close.type = 'button';
  close.setAttribute('aria-label', 'Dismiss message');
  close.textContent = '×';
  close.addEventListener('click', () => div.remove());
  div.append(p, close);
  box.prepend(div);
  while (box.children.length > 3) box.lastChild.remove();
  if (AUTO_DISMISS_MS[kind]) setTimeout(() => div.remove(), AUTO_DISMISS_MS[kind]);
  return div;
}

/** Removes the message of this key, if shown. */
export function dismiss(key) {
  document.querySelectorAll(`#messages [data-key="${key}"]`).forEach((e) => e.remove());
}

/** "12 s ago", "3 min ago", "2 h ago", "in 40 s". */
export function timeAgo(iso) {
  const d = (Date.now() - Date.parse(iso)) / 1000;
  const abs = Math.abs(d);
  let text;
  if (abs < 5) return 'just now';
  if (abs < 90) text = `${Math.round(abs)} s`;
  else if (abs < 5400) text = `${Math.round(abs / 60)} min`;
  else if (abs < 172_800) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86_400)} days`;
  return d >= 0 ? `${text} ago` : `in ${text}`;
}

/** Local wall-clock time of an RFC 3339 instant. */
export function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}
