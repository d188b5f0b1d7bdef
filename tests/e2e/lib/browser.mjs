// Headless Chromium from the system (`/usr/bin/chromium`), driven by playwright-core, with the
// flags that work on these machines (see shared notes) and a fresh profile per launch.
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT } from './studio.mjs';

export const SHOTS = join(ROOT, 'target/e2e-screenshots');

export async function launch() {
  mkdirSync(SHOTS, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
  // A persistent context on a fresh, empty profile folder (playwright's way of `--user-data-dir`).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const browser = { close: () => context.close() };
  const page = context.pages()[0] ?? await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 4\d\d|Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`); });
  return { browser, context, page, problems };
}
