// The desktop app under Xvfb, driven through tauri-driver (WebKitWebDriver) with webdriverio in
// classic WebDriver mode: the window opens on the bundled UI, the dashboard renders from the
// in-process studio (cross-origin, with the launch token), and a job is started from the
// wizard and watched until its loss chart has points, with the telemetry panel beside it; its
// completion is announced through the notification plugin; the adapter and the metric export
// download into Downloads. Real workers, tiny fixture model.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { remote } from 'webdriverio';
import { BIN, FIXTURES, ROOT, waitFor } from '../lib/studio.mjs';

const APP = process.env.FINETUNE_DESKTOP_BIN ?? join(ROOT, 'target/debug/finetune-studio-desktop');
const DRIVER = process.env.TAURI_DRIVER ?? 'tauri-driver';
const SHOTS = join(ROOT, 'target/e2e-screenshots');
// tauri-driver, WebKitWebDriver, the app, its web processes and its workers write here. Not to
// this test's stderr: tauri-driver gives WebKitWebDriver (and so everything below it) its own
// stderr, and a process of that tree still alive after the tests would hold the test runner's
// pipe open, so `node --test` would never exit (a CI run hung that way for an hour).
const LOG = join(ROOT, 'target/e2e-logs/desktop.log');
let driver, browser, home;

/** Waits for `promise`, or `ms` at most (without keeping the process alive afterwards). */
function within(promise, ms) {
  let timer;
  const late = new Promise((r) => { timer = setTimeout(r, ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Stops tauri-driver's whole process group: politely, then for sure. */
async function stopDriver() {
  if (!driver || driver.exitCode !== null || driver.signalCode !== null) return;
  const exited = new Promise((r) => driver.once('exit', r));
  const signal = (s) => { try { process.kill(-driver.pid, s); } catch { /* already gone */ } };
  signal('SIGTERM');
  await within(exited, 5000);
  signal('SIGKILL');
  await exited;
}

before(async () => {
  home = mkdtempSync(join(tmpdir(), 'desktop-e2e-'));
  mkdirSync(SHOTS, { recursive: true });
  // A home of its own, whose Downloads folder the app saves adapters into.
  mkdirSync(join(home, '.config'), { recursive: true });
  mkdirSync(join(home, 'Downloads'));
  writeFileSync(join(home, '.config/user-dirs.dirs'), 'XDG_DOWNLOAD_DIR="$HOME/Downloads"\n');
  mkdirSync(join(ROOT, 'target/e2e-logs'), { recursive: true });
  const log = openSync(LOG, 'w');
  driver = spawn(DRIVER, ['--port', '4444'], {
    stdio: ['ignore', log, log],
    detached: true,
    env: {
      ...process.env,
      HOME: home,
      FINETUNE_STUDIO_HOME: join(home, 'studio'),
      FINETUNE_STUDIO_WORKER: BIN,
      FINETUNE_STUDIO_DEMO_MODEL: join(FIXTURES, 'models/llama'),
      FINETUNE_TELEMETRY_MS: '1000',
      RAYON_NUM_THREADS: '1',
    },
  });
  closeSync(log);
  // A failed run shows the end of that log (CI keeps only what was printed).
  process.once('exit', (code) => {
    if (!code) return;
    const tail = readFileSync(LOG, 'utf8').split('\n').slice(-60).join('\n');
    process.stderr.write(`--- last lines of ${LOG}\n${tail}\n`);
  });
  await waitFor('tauri-driver to listen', async () => {
    try { return (await fetch('http://127.0.0.1:4444/status')).ok; } catch { return false; }
  }, 30000);
  browser = await remote({
    hostname: '127.0.0.1', port: 4444, logLevel: 'error', connectionRetryCount: 0,
    capabilities: { browserName: 'wry', 'tauri:options': { application: APP }, 'wdio:enforceWebDriverClassic': true },
  });
});

after(async () => {
  await within(browser?.deleteSession().catch(() => {}), 10000);
  await stopDriver();
  rmSync(home, { recursive: true, force: true });
});

test('the window opens on the dashboard', async () => {
  assert.equal(await browser.getTitle(), 'Finetune Studio');
  const device = await browser.$('[data-testid="device"]');
  await device.waitForDisplayed({ timeout: 30000 });
  assert.match(await device.getText(), /CPU/);
  assert.equal(await browser.execute(() => typeof window.__TAURI__?.core?.invoke), 'function', 'the native dialogs are reachable');
  assert.match(await browser.execute(() => window.__STUDIO__?.base ?? ''), /^http:\/\/127\.0\.0\.1:\d+$/);
  await browser.saveScreenshot(join(SHOTS, 'desktop-dashboard.png'));
});

test('a job is started from the wizard and watched', async () => {
  const demo = await browser.$('button=Try the demo');
  await demo.waitForClickable({ timeout: 20000 });
  await demo.click();
  const steps = await browser.$('#f-train-max_steps');
  await steps.waitForDisplayed({ timeout: 30000 });
  await steps.clearValue();
  await steps.setValue('200');
  const start = await browser.$('[data-testid="start"]');
  await browser.waitUntil(() => start.isEnabled(), { timeout: 10000, timeoutMsg: 'Start stays disabled' });
  await start.click();
  await browser.waitUntil(async () => (await browser.getUrl()).includes('#/jobs/job-'), { timeout: 20000, timeoutMsg: 'no job page' });
  const chart = await browser.$('[data-testid="loss-chart"]');
  await browser.waitUntil(async () => Number(await chart.getAttribute('data-points')) > 10, { timeout: 90000, timeoutMsg: 'no points on the loss chart' });
  const status = () => browser.execute(() => document.querySelector('[data-testid="job-status"]')?.textContent);
  await browser.waitUntil(async () => (await status()) === 'completed', { timeout: 120000, timeoutMsg: 'the job did not complete' });
  assert.equal(Number(await chart.getAttribute('data-points')), 200);
  const panel = await browser.$('[data-testid="telemetry-panel"]');
  assert.ok(Number(await panel.getAttribute('data-samples')) >= 1, 'telemetry samples beside the loss chart');
  await browser.saveScreenshot(join(SHOTS, 'desktop-job.png'));
});

test('the finished job is announced by a desktop notification', async () => {
  // The UI records what it sent (and any error the plugin answered, e.g. a missing permission).
  const sent = () => browser.execute(() => window.__STUDIO_NOTIFICATIONS__ ?? []);
  const done = await waitFor('the completion notification', async () => (await sent()).find((n) => /completed/.test(n.title)), 20000, 500);
  assert.match(done.title, /^Demo: JSON answers completed$/);
  assert.equal(done.error, undefined, `the notification plugin refused: ${done.error}`);
  // Reports open in the system's browser through the app's own command, which opens studio pages only.
  const refused = await browser.executeAsync((done) => {
    window.__TAURI__.core.invoke('open_in_browser', { path: 'file:///etc/passwd' }).then(() => done('opened'), (e) => done(String(e)));
  });
  assert.match(refused, /not a studio page/);
});

test('the adapter downloads into the Downloads folder', async () => {
  const link = await browser.$('a=Download adapter');
  await link.waitForClickable({ timeout: 10000 });
  await link.click();
  const downloads = join(home, 'Downloads');
  const file = await waitFor('the adapter in Downloads', () => readdirSync(downloads).find((f) => f.endsWith('-adapter.tar') && statSync(join(downloads, f)).size > 1024), 30000);
  assert.match(file, /^demo--json-answers-adapter\.tar$/);
  assert.match(await browser.getUrl(), /#\/jobs\/job-/, 'the window stays on the job page');
});

test('the metric export downloads into the Downloads folder', async () => {
  const link = await browser.$('a=Export metrics');
  await link.waitForClickable({ timeout: 10000 });
  await link.click();
  const downloads = join(home, 'Downloads');
  const file = await waitFor('the metrics in Downloads', () => readdirSync(downloads).find((f) => f.endsWith('-metrics.csv') && statSync(join(downloads, f)).size > 100), 30000);
  assert.equal(file, 'demo--json-answers-metrics.csv');
  assert.match(await browser.getUrl(), /#\/jobs\/job-/, 'the window stays on the job page');
});
