/**
 * Postcopy drills through FaultProxy between two `postcopy vm` processes:
 * the destination listens on a unix socket, the proxy in this process
 * relays (and cuts) every connection, recovery listens on the same path.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FaultProxy } from '../../src/proxy/proxy.js';
import type { CutRule } from '../../src/proxy/cut.js';
import { MIGRATE_ERRORS } from '../../src/control/migrate-args.js';
import { waitStatus, type VmProcess } from './helpers.js';
import { MiB, postcopyPair, sleep, type Pair } from './postcopy-helpers.js';

export interface Drill extends Pair {
  proxy: FaultProxy;
  dstUri: string;
  dir: string;
  close(): Promise<void>;
}

/** A postcopy pair behind a FaultProxy with `cuts`, migrating (precopy running, postcopy not started yet). */
export async function startDrill(
  cuts: CutRule[],
  o: { ramMiB?: number; maxBandwidth?: number; postcopyBandwidth?: number },
  track: VmProcess[],
): Promise<Drill> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-drill-'));
  const dstUri = `unix:${path.join(dir, 'dst.sock')}`;
  const pair = await postcopyPair({ ramMiB: o.ramMiB ?? 32, incoming: dstUri }, track);
  const proxy = new FaultProxy({ listen: `unix:${path.join(dir, 'proxy.sock')}`, target: dstUri, cuts });
  await proxy.listen();
  await pair.src.qmp.execute('migrate-set-parameters', {
    'max-bandwidth': o.maxBandwidth ?? 32 * MiB,
    'max-postcopy-bandwidth': o.postcopyBandwidth ?? 4 * MiB,
  });
  await pair.src.qmp.execute('migrate', { uri: proxy.uri });
  return {
    ...pair,
    proxy,
    dstUri,
    dir,
    close: async () => {
      await proxy.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function status(v: VmProcess): Promise<string> {
  return ((await v.qmp.execute<Record<string, unknown>>('query-migrate')).status as string | undefined) ?? 'none';
}

/** Waits until both sides report postcopy-paused. */
export async function bothPaused(d: Drill, timeoutMs = 15_000): Promise<void> {
  await waitStatus(d.src.qmp, ['postcopy-paused'], timeoutMs);
  await waitStatus(d.dst.qmp, ['postcopy-paused'], timeoutMs);
}

/**
 * One recovery attempt: migrate-recover on the destination (retried while a
 * broken handshake is still winding down), then migrate resume=true on the source.
 */
export async function recover(d: Drill, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      await d.dst.qmp.execute('migrate-recover', { uri: d.dstUri });
      break;
    } catch (e) {
      const m = (e as Error).message;
      if (m !== MIGRATE_ERRORS.recoverNotPaused) throw e;
      if (Date.now() > end) throw new Error(`migrate-recover kept failing: ${m}`);
      await sleep(20);
    }
  }
  for (;;) {
    try {
      await d.src.qmp.execute('migrate', { uri: d.proxy.uri, resume: true });
      return;
    } catch (e) {
      const m = (e as Error).message;
      if (m !== MIGRATE_ERRORS.resumeNotPaused) throw e;
      if (Date.now() > end) throw new Error(`migrate resume kept failing: ${m} (source ${await status(d.src)})`);
      await sleep(20);
    }
  }
}

/** Waits until both are postcopy-active or beyond. */
export async function bothActive(d: Drill, timeoutMs = 15_000): Promise<void> {
  await waitStatus(d.src.qmp, ['postcopy-active', 'completed'], timeoutMs);
  await waitStatus(d.dst.qmp, ['postcopy-active', 'completed'], timeoutMs);
}

export { status };
