// Errors where the user acted, and the other pages: an invalid preset value shows an inline
// error (and a valid one saves as a new preset), a bad dataset is reported by line number,
// History overlays two jobs' loss curves, the first-run "Try the demo" button opens the wizard
// pre-filled, and the dark theme renders. Headless Chromium, real studio, real workers.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { launch, SHOTS } from '../lib/browser.mjs';
import { FIXTURES, startStudio, waitFor } from '../lib/studio.mjs';

let studio, b, page;
const MODEL = join(FIXTURES, 'models/llama');

before(async () => {
  // The demo uses the fixture model instead of downloading SmolLM2 (same code path after the fetch).
  studio = await startStudio({ env: { FINETUNE_STUDIO_DEMO_MODEL: MODEL } });
  b = await launch();
  page = b.page;
});
after(async () => {
  await b?.browser.close();
  await studio?.stop();
  assert.deepEqual(b?.problems ?? [], [], 'no script errors in the page');
});

test('first run offers the demo, which opens the wizard pre-filled', async () => {
  await page.goto(`${studio.url}/#/`);
  await page.getByTestId('device').waitFor();
  assert.match(await page.getByTestId('device').innerText(), /CPU/);
  await page.getByRole('button', { name: 'Try the demo' }).click();
  await page.waitForURL(/#\/new\?demo=1/);
  await page.getByLabel('Job name').waitFor();
  assert.equal(await page.getByLabel('Job name').inputValue(), 'Demo: JSON answers');
  assert.equal(await page.getByLabel('Max steps').inputValue(), '60');
  await page.getByRole('tab', { name: 'TOML' }).click();
  const toml = await page.locator('#toml-text').inputValue();
  assert.ok(toml.includes(MODEL), 'the demo model is chosen');
  assert.match(toml, /json-answers\.jsonl/);
  await page.screenshot({ path: join(SHOTS, 'demo-wizard.png') });
  const { body } = await studio.api('GET', '/datasets');
  assert.equal(body.datasets[0].name, 'JSON answers (demo)');
});

test('an invalid preset value shows an inline error; a valid one saves as a new preset', async () => {
  await page.goto(`${studio.url}/#/presets`);
  await page.getByRole('button', { name: /LoRA quick CPU/ }).click();
  const lr = page.getByLabel('Learning rate');
  await lr.fill('-1');
  const err = page.getByTestId('error-train.lr');
  await err.waitFor();
  assert.match(await err.innerText(), /lr|must|range|\(0, 1\]/i);
  assert.equal(await lr.getAttribute('aria-invalid'), 'true');
  assert.equal(await page.getByRole('button', { name: 'Save as new preset' }).isDisabled(), true);
  await page.screenshot({ path: join(SHOTS, 'preset-invalid.png') });
  await lr.fill('0.0005');
  await waitFor('the error to clear', async () => (await err.count()) === 0);
  await page.getByLabel('Name of the new preset').fill('My careful preset');
  await page.getByRole('button', { name: 'Save as new preset' }).click();
  await page.getByText('Saved “My careful preset”').waitFor();
  const { body } = await studio.api('GET', '/configs/templates');
  const saved = body.templates.find((t) => t.id === 'my-careful-preset');
  assert.equal(saved?.config.train.lr, 0.0005);
  // A built-in name is refused next to the name field.
  await page.getByLabel('Name of the new preset').fill('lora quick cpu');
  await page.getByRole('button', { name: 'Save as new preset' }).click();
  assert.match(await page.getByTestId('error-name').innerText(), /built-in/);
});

test('a bad dataset shows its line number', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bad-data-'));
  const bad = join(dir, 'broken.jsonl');
  writeFileSync(bad, [
    JSON.stringify({ instruction: 'Say hi', output: 'Hi!' }),
    JSON.stringify({ instruction: 'Say bye', output: 'Bye!' }),
    '{"instruction": "oops", "output": ',
    JSON.stringify({ instruction: 'Count', output: '1 2 3' }),
  ].join('\n') + '\n');
  await page.goto(`${studio.url}/#/new`);
  await page.getByRole('radio', { name: /SmolLM2|llama/ }).first().check();
  await page.getByTestId('model-facts').waitFor();
  await page.getByRole('button', { name: 'Next: Preset' }).click();
  await page.getByRole('radio', { name: /LoRA quick CPU/ }).check();
  await page.getByRole('button', { name: 'Next: Dataset' }).click();
  await page.locator('#ds-file').setInputFiles(bad);
  const errors = page.getByTestId('dataset-errors');
  await errors.waitFor();
  assert.match(await errors.innerText(), /Line 3/);
  assert.equal(await page.getByRole('button', { name: 'Next: Review' }).isDisabled(), true, 'cannot go on with a bad dataset');
  await page.screenshot({ path: join(SHOTS, 'dataset-error.png') });
});

test('history overlays the loss curves of two jobs', async () => {
  const cfg = (steps, lr) => ({
    model: { path: MODEL, device: 'cpu', dtype: 'f32' },
    data: { path: join(FIXTURES, 'data/alpaca.jsonl'), max_len: 64 },
    train: { max_steps: steps, batch_size: 2, lr, scheduler: 'constant' },
  });
  const a = await studio.api('POST', '/jobs', { ...cfg(20, 1e-3), job: { name: 'overlay A' } });
  const c = await studio.api('POST', '/jobs', { ...cfg(30, 5e-4), job: { name: 'overlay B' } });
  assert.equal(a.status, 201); assert.equal(c.status, 201);
  for (const id of [a.body.job_id, c.body.job_id]) {
    await waitFor(`job ${id} to complete`, async () => (await studio.api('GET', `/jobs/${id}`)).body.status === 'completed', 90000, 500);
  }
  await page.goto(`${studio.url}/#/history`);
  await page.getByLabel('Compare overlay A').check();
  await page.getByLabel('Compare overlay B').check();
  await page.getByRole('button', { name: /Compare 2 loss curves/ }).click();
  const chart = page.getByTestId('compare-chart');
  await waitFor('the overlay', async () => Number(await chart.getAttribute('data-points')) === 30);
  const legend = await page.locator('.chart-card').innerText();
  assert.ok(legend.includes('overlay A') && legend.includes('overlay B'), legend);
  await page.screenshot({ path: join(SHOTS, 'history-compare.png') });
});

test('the dark theme renders and is remembered', async () => {
  await page.goto(`${studio.url}/#/`);
  await page.getByRole('button', { name: /Switch to dark theme/ }).click();
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, 'rgb(20, 23, 28)');
  await page.reload();
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  await page.getByTestId('device').waitFor();
  await page.screenshot({ path: join(SHOTS, 'dashboard-dark.png') });
});

test('the pages are usable from the keyboard', async () => {
  await page.goto(`${studio.url}/#/`);
  await page.getByTestId('device').waitFor();
  // Tab reaches the navigation; Enter follows a link.
  for (let i = 0; i < 8; i++) {
    await page.keyboard.press('Tab');
    if ((await page.evaluate(() => document.activeElement?.textContent)) === 'Presets') break;
  }
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/presets/);
  await page.getByRole('button', { name: /LoRA quick CPU/ }).waitFor();
});
