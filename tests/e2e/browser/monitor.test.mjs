// The training monitor, in headless Chromium against the real studio and real workers: the job
// page's telemetry panel fills from live samples (process memory on a machine without NVIDIA,
// and the reason GPU telemetry is unavailable), an injected NaN raises alerts that show up on
// the job page and the dashboard, a reload redraws the samples from history, the dashboard's
// device panel reads the studio's own telemetry, and the report and the metric export answer.
// The job page is screenshotted in both themes (the light one is the README's picture), the
// dashboard in the dark one.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { launch, SHOTS } from '../lib/browser.mjs';
import { FIXTURES, ROOT, startStudio, waitFor } from '../lib/studio.mjs';

let studio, b, page, jobId;
const samples = async () => Number(await page.getByTestId('telemetry-panel').getAttribute('data-samples'));

before(async () => {
  // Per-job fault injection is a test-only switch of the studio; a sample a second (not two).
  studio = await startStudio({ env: { FINETUNE_ALLOW_FAULTS: '1', FINETUNE_TELEMETRY_MS: '1000' } });
  b = await launch();
  page = b.page;
  const created = await studio.api('POST', '/jobs', {
    model: { path: join(FIXTURES, 'models/llama'), device: 'cpu', dtype: 'f32' },
    data: { path: join(FIXTURES, 'data/alpaca.jsonl'), max_len: 64, eval_fraction: 0.2 },
    train: { max_steps: 5000, batch_size: 2, lr: 1e-3, scheduler: 'constant', eval_every_steps: 50 },
    checkpoint: { every_steps: 20, keep_last: 2 },
    job: { name: 'monitored run', fault: 'nan@30' },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  jobId = created.body.job_id;
});
after(async () => {
  try {
    // Stop the worker before the data dir goes (it runs in a process group of its own).
    if (jobId && studio) {
      await studio.api('POST', `/jobs/${jobId}/cancel`, {});
      await waitFor('the job to stop', async () => ['cancelled', 'completed', 'failed'].includes((await studio.api('GET', `/jobs/${jobId}`)).body.status), 30000, 300);
    }
  } finally {
    await b?.browser.close();
    await studio?.stop();
  }
  assert.deepEqual(b?.problems ?? [], [], 'no script errors in the page');
});

test('the job page shows live telemetry beside the loss chart', async () => {
  await page.goto(`${studio.url}/#/jobs/${jobId}`);
  const panel = page.getByTestId('telemetry-panel');
  await panel.waitFor();
  const first = await waitFor('a telemetry sample on the job page', async () => (await samples()) || 0, 90000);
  // The panel and its chart are read in one go: a sample a second can land between two reads.
  const [held, drawn] = await panel.evaluate((el) => [el.dataset.samples, el.querySelector('[data-testid="telemetry-chart"]')?.dataset.points].map(Number));
  assert.ok(held >= first, `${held} samples after ${first}`);
  assert.equal(drawn, held, 'the chart draws every sample the panel holds');
  assert.match(await page.getByTestId('process-readout').innerText(), /Process\s+\d+(\.\d+)? (MB|GB)/, 'the process memory is shown');
  // What the worker reported about GPUs: the reason they are unavailable here, else the readings.
  const { body } = await studio.api('GET', `/jobs/${jobId}/telemetry`);
  const sample = body.samples.at(-1);
  if (sample.gpus.length === 0) {
    assert.match(sample.gpu_status, /^unavailable: ./);
    const line = await panel.getByTestId('gpu-status').innerText();
    assert.equal(line, `GPU telemetry unavailable: ${sample.gpu_status.replace(/^unavailable:\s*/, '')}`);
  } else {
    assert.ok(await panel.getByTestId('gpu-readout').count() >= 1, 'a GPU readout per GPU');
  }
  // Live: more samples arrive (one about every 2 s) without a reload.
  await waitFor('live telemetry samples', async () => (await samples()) > first, 30000);
});

test('an injected NaN raises alerts on the job page', async () => {
  const alerts = page.getByTestId('alerts');
  await waitFor('an alert on the job page', async () => (await alerts.count()) && Number(await alerts.getAttribute('data-count')) >= 1, 90000);
  const kinds = await alerts.locator('[data-testid="alert"]').evaluateAll((els) => els.map((e) => e.dataset.kind));
  assert.ok(kinds.some((k) => k === 'nan_loss' || k === 'recovered'), `alert kinds: ${kinds}`);
  const text = await alerts.innerText();
  assert.match(text, /NaN/, 'the message says what happened');
  assert.match(text, /step \d+/, 'with its step');
  // The page shows what the studio stored.
  const { body } = await studio.api('GET', `/jobs/${jobId}/alerts`);
  assert.ok(body.alerts.length >= kinds.length, JSON.stringify(body));
  assert.ok(body.alerts.every((a) => a.suggestion !== undefined && typeof a.ts_ms === 'number'));
});

test('a reload redraws the telemetry from history and keeps following', async () => {
  await waitFor('eval points on the loss chart', async () => Number(await page.getByTestId('loss-card').getAttribute('data-evals')) >= 2, 120000);
  const before = await samples();
  await page.reload();
  const n = await waitFor('the samples after the reload', async () => { const n = await samples(); return n >= before && n; }, 30000);
  const { body } = await studio.api('GET', `/jobs/${jobId}/telemetry`);
  const stored = body.samples;
  // The chart starts at the first stored sample and holds every sample stored so far.
  const [lo] = (await page.getByTestId('telemetry-chart').getAttribute('data-steps')).split('-').map(Number);
  assert.equal(lo, stored[0].ts_ms / 1000, 'starts at the first sample');
  assert.ok(n >= stored.length - 1, `${n} drawn, ${stored.length} stored`);
  await waitFor('live samples after the reload', async () => (await samples()) > n, 30000);
  // A picture worth keeping: a few dozen steps and a quarter minute of samples.
  await waitFor('15 samples for the screenshot', async () => (await samples()) >= 15, 60000, 500);
  const alerts = Number(await page.getByTestId('alerts').getAttribute('data-count'));
  assert.ok(alerts >= 1, 'the alerts are read back too');

  mkdirSync(join(ROOT, 'docs'), { recursive: true });
  await page.screenshot({ path: join(SHOTS, 'job-monitor.png') });
  copyFileSync(join(SHOTS, 'job-monitor.png'), join(ROOT, 'docs/screenshot-job.png'));
  await page.evaluate(() => localStorage.setItem('studio-theme', 'dark'));
  await page.reload();
  await waitFor('the samples in the dark theme', async () => (await samples()) > 0, 30000);
  await page.getByTestId('alerts').waitFor();
  await page.screenshot({ path: join(SHOTS, 'job-monitor-dark.png') });
});

test('the report and the metric export answer from the job page links', async () => {
  const report = page.getByRole('link', { name: 'Report' });
  assert.equal(await report.getAttribute('target'), '_blank');
  const html = await fetch(new URL(await report.getAttribute('href'), studio.url));
  assert.equal(html.status, 200);
  assert.match(html.headers.get('content-type'), /text\/html/);
  assert.match(await html.text(), /monitored run/);
  const exp = page.getByRole('link', { name: 'Export metrics' });
  const csv = await fetch(new URL(await exp.getAttribute('href'), studio.url));
  assert.equal(csv.status, 200);
  const lines = (await csv.text()).trim().split('\n');
  assert.match(lines[0], /step/);
  assert.ok(lines.length > 10, `${lines.length} lines`);
});

test('the dashboard shows the machine and the recent alerts, linking to the job', async () => {
  await page.goto(`${studio.url}/#/`);
  const device = page.getByTestId('device');
  await device.waitFor();
  const { body: sys } = await studio.api('GET', '/system');
  assert.match(await device.innerText(), /CPU/);
  if (sys.telemetry) {
    assert.match(await page.getByTestId('device-memory').innerText(), /\d+(\.\d+)? [KMGT]?B \/ \d+(\.\d+)? [KMGT]?B/);
    if (sys.telemetry.gpus.length === 0) assert.match(await device.getByTestId('gpu-status').innerText(), /^GPU telemetry unavailable: ./);
    else assert.ok(await device.getByTestId('gpu-readout').count() >= 1);
  }
  const recent = page.getByTestId('recent-alerts');
  await recent.waitFor();
  const item = recent.locator('[data-testid="alert"]').first();
  await item.getByRole('link', { name: 'monitored run' }).click();
  await page.waitForURL(new RegExp(`#/jobs/${jobId}$`));
  await page.getByTestId('telemetry-panel').waitFor();
  await page.goto(`${studio.url}/#/`);
  await page.getByTestId('recent-alerts').waitFor();
  await waitFor('the running job\'s loss curve', async () => Number(await page.getByTestId('mini-loss').getAttribute('data-points')) > 0, 30000);
  await page.screenshot({ path: join(SHOTS, 'dashboard-monitor-dark.png') });
  await page.evaluate(() => localStorage.setItem('studio-theme', 'light'));
});
