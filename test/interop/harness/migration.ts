/**
 * Migration helpers over QMP for interop tests: wait for a status, capture
 * a stream a real QEMU writes with `migrate "exec:cat > FILE"`.
 */

import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/** Anything with QMP's execute (our QmpClient, the test guest's MiniQmp). */
export interface QmpLike {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
}

/** The subset of query-migrate we read. */
export interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  ram?: Record<string, number>;
  [k: string]: unknown;
}

/**
 * Poll query-migrate until the status is one of `status`. Fails fast on
 * `failed` (with error-desc) unless `failed` is wanted, and on timeout.
 * When `completed` shows with total-time 0 (QEMU 7.2 does that for a
 * moment, SPEC §13), queries again so the figures are real.
 */
export async function waitForStatus(
  qmp: QmpLike,
  status: string | string[],
  timeoutMs = 30_000,
  pollMs = 20,
): Promise<MigrateInfo> {
  const want = Array.isArray(status) ? status : [status];
  const deadline = Date.now() + timeoutMs;
  let info: MigrateInfo = {};
  for (;;) {
    info = await qmp.execute<MigrateInfo>('query-migrate');
    const st = info.status ?? 'none';
    if (want.includes(st)) {
      // (A destination's query-migrate has no total-time at all: nothing to wait for.)
      if (st === 'completed' && info['total-time'] === 0 && Date.now() < deadline) {
        await sleep(pollMs);
        continue;
      }
      return info;
    }
    if (st === 'failed') {
      throw new Error(`migration failed: ${info['error-desc'] ?? '(no error-desc)'}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`migration status '${st}' after ${timeoutMs} ms, wanted ${want.join('|')}`);
    }
    await sleep(pollMs);
  }
}

/** Options of {@link captureStream}. */
export interface CaptureOptions {
  /** Where to write the stream (default: a new file in `dir`). */
  file?: string;
  /** Directory for the default file name. */
  dir?: string;
  /** Capabilities to set first, e.g. `{ xbzrle: true }`. */
  capabilities?: Record<string, boolean>;
  /** Parameters to set first (migrate-set-parameters). */
  parameters?: Record<string, unknown>;
  timeoutMs?: number;
}

/**
 * Have QEMU migrate into a file via `exec:` and wait until it is complete.
 * `cat` writes to FILE.part which is renamed to FILE when cat exits, so
 * the file is whole when this resolves (the source reports `completed`
 * before its pipe reader is done). Returns the file path.
 */
export async function captureStream(qmp: QmpLike, opts: CaptureOptions = {}): Promise<string> {
  const file = opts.file ?? path.join(opts.dir ?? '/tmp', `stream-${randomBytes(6).toString('hex')}.bin`);
  if (/[^\w./+-]/.test(file)) throw new Error(`captureStream: unsafe path for a shell: ${file}`);
  if (opts.capabilities) {
    await qmp.execute('migrate-set-capabilities', {
      capabilities: Object.entries(opts.capabilities).map(([capability, state]) => ({ capability, state })),
    });
  }
  if (opts.parameters) await qmp.execute('migrate-set-parameters', opts.parameters);
  fs.rmSync(file, { force: true });
  await qmp.execute('migrate', { uri: `exec:cat > ${file}.part && mv ${file}.part ${file}` });
  const timeoutMs = opts.timeoutMs ?? 60_000;
  await waitForStatus(qmp, 'completed', timeoutMs);
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`captureStream: ${file} never appeared`);
    await sleep(10);
  }
  return file;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
