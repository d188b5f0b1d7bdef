// The main path a user takes, in headless Chromium against the real studio and real workers on
// the tiny llama fixture: the wizard creates a job, the loss chart grows while it runs, a reload
// redraws the whole curve without gaps, cancel stops it, and History lists it.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { launch, SHOTS } from '../lib/browser.mjs';
import { FIXTURES, startStudio, waitFor } from '../lib/studio.mjs';

let studio, b, page, jobId;
const chartPoints = async () => Number(await page.getByTestId('loss-chart').getAttribute('data-points'));
/** Points, first and last step of the loss chart, read together (the chart updates live). */
const chart = () => page.getByTestId('loss-chart').evaluate((el) => {
  const [lo, hi] = (el.dataset.steps || '0-0').split('-').map(Number);
  return { n: Number(el.dataset.points), lo, hi };
});

before(async () => {
  studio = await startStudio();
  b = await launch();
  page = b.page;
});
after(async () => {
  await b?.browser.close();
  await studio?.stop();
  assert.deepEqual(b?.problems ?? [], [], 'no script errors in the page');
});

test('the wizard creates a job', async () => {
  await page.goto(`${studio.url}/#/new`);
  // Model: add the fixture folder by path; its facts and memory estimate appear.
  await page.getByLabel('Add a model folder').fill(join(FIXTURES, 'models/llama'));
  await page.getByRole('button', { name: 'Add', exact: true }).click();
  const facts = page.getByTestId('model-facts');
  await facts.waitFor();
  assert.match(await facts.innerText(), /Family\s+llama/);
  assert.match(await facts.innerText(), /LoRA/);
  await page.getByRole('button', { name: 'Next: Preset' }).click();
  // Preset cards with a fit verdict for this machine.
  const quick = page.getByTestId('preset-lora-quick-cpu');
  await quick.waitFor();
  await waitFor('a fit verdict on the preset card', async () => /fits|tight|won't fit/.test(await quick.innerText()));
  await page.getByRole('radio', { name: /LoRA quick CPU/ }).check();
  await page.getByRole('button', { name: 'Next: Dataset' }).click();
  // Dataset: upload; every record is checked and a preview shows the learned tokens.
  await page.locator('#ds-file').setInputFiles(join(FIXTURES, 'data/alpaca.jsonl'));
  await page.getByText('Every record is valid').waitFor();
  const preview = page.getByTestId('dataset-preview');
  await preview.waitFor();
  assert.ok(await preview.locator('.learned').count() > 0, 'learned tokens are highlighted');
  assert.ok(await preview.locator('.masked').count() > 0, 'prompt tokens are shown masked');
  await page.getByRole('button', { name: 'Next: Review' }).click();
  // Review: a long enough run to watch, with evaluation.
  await page.getByLabel('Job name').fill('e2e wizard run');
  await page.getByLabel('Max steps').fill('4000');
  await page.getByLabel('Batch size').fill('2');
  await page.getByLabel('Max tokens per example').fill('64');
  await page.getByLabel('Held-out fraction').fill('0.2');
  await page.getByLabel('Evaluate every (steps)').fill('100');
  await page.getByLabel('Checkpoint every (steps)').fill('500');
  await page.getByRole('tab', { name: 'TOML' }).click();
  assert.match(await page.locator('#toml-text').inputValue(), /max_steps = 4000/);
  await page.getByRole('tab', { name: 'Form' }).click();
  await waitFor('the Start button to be enabled', () => page.getByTestId('start').isEnabled());
  await page.getByTestId('start').click();
  await page.waitForURL(/#\/jobs\/job-/);
  jobId = page.url().split('/jobs/')[1];
  assert.equal(await page.getByTestId('job-name').innerText(), 'e2e wizard run');
  const { body } = await studio.api('GET', `/jobs/${jobId}`);
  assert.equal(body.config.train.max_steps, 4000);
  assert.equal(body.name, 'e2e wizard run');
});

test('the loss chart gains points while the job runs', async () => {
  await waitFor('the job to be running', async () => (await page.getByTestId('job-status').textContent()) === 'running', 60000);
  const first = await waitFor('points on the chart', async () => (await chartPoints()) || 0, 60000);
  const later = await waitFor('more points', async () => { const n = await chartPoints(); return n > first + 20 && n; }, 60000);
  assert.ok(later > first, `${first} -> ${later}`);
  const c = await chart();
  assert.equal(c.lo, 1);
  assert.equal(c.hi - c.lo + 1, c.n, 'one point per step, no gaps');
});

test('a reload resumes the chart from history without gaps', async () => {
  const before = await chartPoints();
  await page.reload();
  const n = await waitFor('the chart after reload', async () => { const n = await chartPoints(); return n >= before && n; }, 30000);
  const c = await chart();
  assert.ok(c.n >= n);
  assert.equal(c.lo, 1, 'starts at step 1');
  assert.equal(c.hi - c.lo + 1, c.n, 'no gaps');
  // It keeps following live after the replay.
  await waitFor('live points after the reload', async () => (await chartPoints()) > n + 10, 60000);
  const c2 = await chart();
  assert.equal(c2.hi - c2.lo + 1, c2.n, 'still no gaps');
  await waitFor('eval points on the loss chart', async () => Number(await page.getByTestId('loss-card').getAttribute('data-evals')) >= 3, 90000);
  await page.screenshot({ path: join(SHOTS, 'job-running.png') });
});

test('cancel stops the job', async () => {
  await page.getByRole('button', { name: 'Cancel' }).click();
  await waitFor('the cancelled status', async () => (await page.getByTestId('job-status').textContent()) === 'cancelled', 30000);
  const { body } = await studio.api('GET', `/jobs/${jobId}`);
  assert.equal(body.status, 'cancelled');
  assert.ok(body.current_step < 4000, 'it stopped before the end');
  assert.equal(await page.getByRole('button', { name: 'Resume' }).isVisible(), true);
});

test('history lists the job and filters', async () => {
  await page.goto(`${studio.url}/#/history`);
  const table = page.getByTestId('history-table');
  await table.waitFor();
  const row = table.locator('tr', { hasText: 'e2e wizard run' });
  assert.match(await row.innerText(), /cancelled/);
  assert.match(await row.innerText(), /llama/);
  await page.getByLabel('Status').selectOption('completed');
  await page.getByText('No job matches these filters.').waitFor();
  await page.getByLabel('Status').selectOption('cancelled');
  await table.locator('tr', { hasText: 'e2e wizard run' }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'history.png') });
});
