// The status page in real headless Chromium, driven by playwright-core: started by
// tests/tests/status_page.rs against a real agent (three tiny models, a token, test ops, zombie
// detection at 50 MiB after 1 s, automatic freeing off).
//
// Environment: VK_URL, VK_TOKEN, VK_ARTIFACTS (screenshots), VK_PROFILE (a fresh Chromium
// profile directory), VK_PLAYWRIGHT (the playwright-core package directory), VK_CHROMIUM.
// Prints one step per line, and a last line `RESULT {json}`; exits 1 on the first failure
// (after a screenshot of the page as it was).

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env('VK_URL');
const TOKEN = env('VK_TOKEN');
const ARTIFACTS = env('VK_ARTIFACTS');
const { chromium } = createRequire(import.meta.url)(env('VK_PLAYWRIGHT'));

// A busy 2-core machine: wait for conditions, generously, never for fixed times.
const WAIT = 120_000;
const MODELS = ['tiny-a', 'tiny-b', 'tiny-c'];

mkdirSync(ARTIFACTS, { recursive: true });
const steps = [];
const consoleErrors = [];
const expectedHttpErrors = new Set();
let page;

function step(name) {
  steps.push(name);
  console.log(`step: ${name}`);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function shot(name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

async function agent(method, path, body) {
  const r = await fetch(`${URL_}${path}`, {
    method,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(data)}`);
  return data;
}

const row = (model) => page.locator(`#model-rows tr[data-model="${model}"]`);

async function rowState(model, state) {
  await page.waitForSelector(`#model-rows tr[data-model="${model}"][data-state="${state}"]`, { timeout: WAIT });
}

async function message(kind, text) {
  const m = page.locator(`#messages .msg.${kind}`, { hasText: text });
  await m.first().waitFor({ timeout: WAIT });
  return m.first().innerText();
}

async function setWidth(width) {
  await page.setViewportSize({ width, height: width < 600 ? 844 : 900 });
  // The chart redraws on resize; wait for it to fit the new width.
  await page.waitForFunction((w) => {
    const svg = document.querySelector('#chart svg');
    return svg && Number(svg.getAttribute('width')) <= w;
  }, width, { timeout: WAIT });
}

async function run() {
  const context = await chromium.launchPersistentContext(env('VK_PROFILE'), {
    executablePath: process.env.VK_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    timeout: WAIT,
  });
  try {
    page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const http = /status of (\d{3})/.exec(m.text());
      if (http && expectedHttpErrors.has(Number(http[1]))) return;
      consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => consoleErrors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    await scenario(context);
  } catch (e) {
    if (page) await page.screenshot({ path: join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
    throw e;
  } finally {
    await context.close();
  }
}

async function scenario() {
  step('the page loads: every model never loaded, the token field shown');
  await page.goto(URL_);
  for (const m of MODELS) await rowState(m, 'NeverLoaded');
  await page.locator('#token-form').waitFor({ state: 'visible' });
  await page.locator('#chart svg').waitFor();
  check(consoleErrors.length === 0, `no console errors on load: ${consoleErrors.join(' | ')}`);

  step('an action without the token: 401 answered with a clear message');
  expectedHttpErrors.add(401);
  await page.getByRole('button', { name: 'Load tiny-a' }).click();
  const denied = await message('error', 'token');
  check(/needs the agent's token/.test(denied), `401 message: ${denied}`);
  check(await page.evaluate(() => document.activeElement?.id === 'token-input'), 'the token field has focus after a 401');
  expectedHttpErrors.delete(401);

  step('the token, typed and submitted with the keyboard');
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.locator('#token-state', { hasText: 'token set' }).waitFor();

  step('switches by keyboard and by click: loaded, unloaded and never-loaded rows');
  await page.getByRole('button', { name: 'Load tiny-a' }).focus();
  await page.keyboard.press('Enter');
  await rowState('tiny-a', 'Loaded');
  await page.getByRole('button', { name: 'Load tiny-b' }).click();
  await rowState('tiny-b', 'Loaded');
  await rowState('tiny-a', 'Unloaded');
  await rowState('tiny-c', 'NeverLoaded');
  const styles = await page.evaluate(() => {
    const cell = (m, i) => document.querySelector(`#model-rows tr[data-model="${m}"]`).children[i];
    const cs = (m, i) => getComputedStyle(cell(m, i));
    return {
      loadedBg: cs('tiny-b', 2).backgroundColor,
      loadedVram: cell('tiny-b', 2).innerText,
      unloadedStyle: cs('tiny-a', 2).fontStyle,
      unloadedColor: cs('tiny-a', 2).color,
      unloadedVram: cell('tiny-a', 2).innerText,
      neverVram: cell('tiny-c', 2).innerText,
      neverRam: cell('tiny-c', 3).innerText,
      neverColor: cs('tiny-c', 2).color,
      trigger: cell('tiny-b', 5).innerText,
    };
  });
  console.log(`styles: ${JSON.stringify(styles)}`);
  const rgb = (s) => s.match(/\d+/g).map(Number);
  const [r, g, b] = rgb(styles.loadedBg);
  check(r > 230 && g > 200 && b < 220 && r - b > 40, `loaded row is yellow: ${styles.loadedBg}`);
  check(/MiB/.test(styles.loadedVram), `loaded row shows live VRAM: ${styles.loadedVram}`);
  check(styles.unloadedStyle === 'italic', `unloaded row is italic: ${styles.unloadedStyle}`);
  const [ur, ug, ub] = rgb(styles.unloadedColor);
  check(Math.max(ur, ug, ub) - Math.min(ur, ug, ub) < 30 && ur > 80 && ur < 170, `unloaded row is gray: ${styles.unloadedColor}`);
  check(/MiB/.test(styles.unloadedVram) && /unloaded/.test(styles.unloadedVram), `unloaded row shows last VRAM and when: ${styles.unloadedVram}`);
  check(styles.neverVram.trim() === '—' && styles.neverRam.trim() === '—', `never-loaded row shows —: ${styles.neverVram}`);
  const [nr, ng, nb] = rgb(styles.neverColor);
  check(Math.max(nr, ng, nb) < 90, `never-loaded row is dark gray: ${styles.neverColor}`);
  check(/api/.test(styles.trigger), `the last switch's trigger is shown: ${styles.trigger}`);
  // The chart follows live: tiny-b's memory appears in it.
  await page.waitForSelector('#chart path[data-series="model:tiny-b"]', { timeout: WAIT });
  await shot('01-states-1280');

  step('a busy device: 409 answered with a clear message');
  expectedHttpErrors.add(409);
  // A real 409 needs a switch still running when the button is pressed; tiny models load in
  // milliseconds, so the answer is the agent's own 409 body, served once by the browser.
  await page.route('**/v1/gpu/free', (route) => route.fulfill({
    status: 409,
    contentType: 'application/json',
    body: JSON.stringify({ error: { code: 'busy', message: 'device 0 is busy: switching to tiny-c (running for 0.4 s); retry when it is done' } }),
  }), { times: 1 });
  await page.locator('.device [data-action="free"]').click();
  const busy = await message('error', 'busy');
  check(/device is busy: switching to tiny-c/.test(busy) && /Try again/.test(busy), `409 message: ${busy}`);
  await page.unrouteAll();
  expectedHttpErrors.delete(409);

  step('a leak: the zombie banner appears, naming what holds the memory');
  const leak = await agent('POST', '/v1/debug/leak', { mib: 200, pooled: true });
  check(leak.model === 'tiny-b', `the leak is in tiny-b: ${JSON.stringify(leak)}`);
  const banner = page.locator('#zombie-banner');
  await banner.waitFor({ state: 'visible' });
  const pid = (await agent('GET', '/v1/status')).devices[0].models.find((m) => m.name === 'tiny-b').pid;
  const bannerText = await banner.innerText();
  check(/Zombie Memory Detected/.test(bannerText), 'banner title');
  check(bannerText.includes(`PID ${pid}`) && /tiny-b/.test(bannerText), `banner names the holder (PID ${pid}): ${bannerText}`);
  check(/Auto-fix is off/.test(bannerText), `banner says when auto-fix runs: ${bannerText}`);
  const ghostRow = await page.locator('#ghost-sources').innerText();
  check(ghostRow.includes(String(pid)), `device panel lists the ghost source: ${ghostRow}`);
  await page.waitForSelector('#chart path[data-series="ghost"]', { timeout: WAIT });
  await shot('02-zombie-1280');

  step('at phone width: no horizontal scrolling, controls reachable');
  await setWidth(390);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 390, `page fits 390 px (scrollWidth ${overflow})`);
  await shot('03-zombie-390');
  await setWidth(1280);

  step('Free VRAM in the banner makes the banner go');
  await banner.getByRole('button', { name: 'Free VRAM' }).click();
  await banner.waitFor({ state: 'hidden' });
  await message('ok', 'Free VRAM done');

  step('Reset GPU asks first: cancel does nothing, confirm resets');
  const remediations = async () => (await agent('GET', '/v1/history?window=3600')).remediations.length;
  const before = await remediations();
  await page.locator('.device [data-action="reset"]').click();
  const dialog = page.locator('#reset-dialog');
  await dialog.waitFor({ state: 'visible' });
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  check(await remediations() === before, 'cancel ran no reset');
  await page.locator('.device [data-action="reset"]').click();
  await dialog.getByRole('button', { name: 'Reset GPU' }).click();
  await message('ok', 'GPU reset done');
  await rowState('tiny-b', 'Loaded');

  step('Test Load: rows turn to checkmarks one by one, then the active model comes back');
  await page.evaluate(() => {
    window.testLog = [];
    const snapshot = () => Object.fromEntries([...document.querySelectorAll('#model-rows tr')]
      .map((tr) => [tr.dataset.model, tr.dataset.test]));
    new MutationObserver(() => window.testLog.push(snapshot()))
      .observe(document.getElementById('model-rows'), { attributes: true, attributeFilter: ['data-test'], subtree: true });
  });
  await page.getByRole('button', { name: '⚡ Test Load' }).click();
  for (const m of MODELS) {
    await page.waitForSelector(`#model-rows tr[data-model="${m}"][data-test="done"]`, { timeout: WAIT });
  }
  const summary = await message('ok', 'Test Load');
  check(/3 of 3 models measured/.test(summary) && /tiny-b is active again/.test(summary), `Test Load summary: ${summary}`);
  await rowState('tiny-b', 'Loaded');
  const log = await page.evaluate(() => window.testLog);
  for (const [i, m] of MODELS.entries()) {
    const first = log.find((s) => s[m] === 'done');
    check(first, `${m} was seen done`);
    for (const later of MODELS.slice(i + 1)) {
      check(['pending', 'running'].includes(first[later]), `when ${m} was done, ${later} was still ${first[later]}`);
    }
  }
  check(log.some((s) => s['tiny-a'] === 'running' && s['tiny-b'] === 'pending'), 'a row spins while the next waits');
  for (const m of MODELS) {
    const cell = await row(m).locator('td.test-cell').innerText();
    check(/✓\s*[\d.]+ MiB/.test(cell), `${m}'s row shows its measured VRAM: ${cell}`);
  }
  const status = await agent('GET', '/v1/status');
  const tinyC = status.devices[0].models.find((m) => m.name === 'tiny-c');
  check(tinyC.loads === 1 && tinyC.last_trigger === 'test-load', `tiny-c loaded by the test load: ${JSON.stringify(tinyC)}`);
  check(status.devices[0].active_model === 'tiny-b', 'tiny-b active again');
  await shot('04-test-load-1280');

  step('the history window is keyboard-operable');
  await page.getByRole('radio', { name: '15 min' }).focus();
  await page.keyboard.press('ArrowRight');
  check(await page.getByRole('radio', { name: '1 h' }).getAttribute('aria-checked') === 'true', '1 h selected by ArrowRight');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  check(outline !== 'none', `focus is visible (outline ${outline})`);
  await page.locator('#chart svg').waitFor();
  await page.keyboard.press('ArrowRight');
  check(await page.getByRole('radio', { name: '24 h' }).getAttribute('aria-checked') === 'true', '24 h selected');
  await page.locator('#chart svg').waitFor();
  await page.getByRole('radio', { name: '15 min' }).click();
  await page.locator('#chart svg').waitFor();

  step('at phone width after the test load');
  await setWidth(390);
  await shot('05-test-load-390');
  await setWidth(1280);

  step('a leak that only a reset clears: the overview (the README picture)');
  await agent('POST', '/v1/debug/leak', { mib: 150, pooled: false });
  await banner.waitFor({ state: 'visible' });
  // Dismissed by hand (the × buttons); some may go by themselves meanwhile.
  for (let i = 0; i < 20 && await page.locator('#messages .msg').count(); i += 1) {
    await page.getByRole('button', { name: 'Dismiss message' }).first().click({ timeout: 5000 }).catch(() => {});
  }
  await page.locator('#messages .msg').first().waitFor({ state: 'detached' });
  await shot('06-overview-1280');

  check(consoleErrors.length === 0, `no console errors: ${consoleErrors.join(' | ')}`);
}

try {
  await run();
  console.log(`RESULT ${JSON.stringify({ ok: true, steps, consoleErrors })}`);
} catch (e) {
  console.log(`RESULT ${JSON.stringify({ ok: false, steps, consoleErrors, error: String(e.stack ?? e) })}`);
  process.exitCode = 1;
}
