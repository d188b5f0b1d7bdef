// Starts the real `finetune-studio serve` binary (real workers, real SQLite) on a free port with
// a fresh data dir and the built UI, and stops it (and its workers) afterwards.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

export const ROOT = resolve(import.meta.dirname, '../../..');
export const FIXTURES = join(ROOT, 'fixtures');
export const BIN = process.env.FINETUNE_STUDIO_BIN ?? join(ROOT, 'target/debug/finetune-studio');

export async function startStudio({ env = {} } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'studio-e2e-'));
  const child = spawn(BIN, ['serve', '--port', '0', '--cancel-grace-s', '5', '--data-dir', dataDir, '--ui-dir', join(ROOT, 'ui/dist')], {
    env: { ...process.env, RAYON_NUM_THREADS: '1', FINETUNE_STUDIO_CACHE: join(dataDir, 'cache'), ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
  });
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('the studio did not print its address in 30 s')), 30000);
    lines.once('line', (l) => { clearTimeout(t); ok(l); });
    child.once('exit', (code) => fail(new Error(`the studio exited with ${code}`)));
  });
  const url = first.replace(/^listening on /, '');
  if (!url.startsWith('http://')) throw new Error(`unexpected first line: ${first}`);
  const api = async (method, path, body) => {
    const resp = await fetch(`${url}/api/v1/fine-tuning${path}`, {
      method, headers: body ? { 'Content-Type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
    });
    return { status: resp.status, body: resp.status === 204 ? null : await resp.json() };
  };
  return {
    url, dataDir, api,
    async stop() {
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
      await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Polls `f` until it returns a truthy value, failing with `what` after `ms`. */
export async function waitFor(what, f, ms = 60000, every = 200) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}
