/**
 * Same-run C baselines (bench/native/probe.c): compiled with gcc at bench
 * time into the temp directory (cached by source hash) and run once. The
 * LIMITS.md figures come from another machine of the same kind on another
 * day; a baseline measured now, on this machine, next to our figures is the
 * honest comparison. Undefined (with the reason) when gcc is missing.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** What probe.c measures: ns per 4 KiB page, ms per 16.8 M-bit scan. */
export interface NativeBaseline {
  zeroHotNs: number;
  zeroColdNs: number;
  zeroSseHotNs: number;
  zeroSseColdNs: number;
  encIdenticalNs: number;
  encClustered1Ns: number;
  scan1Ms: number;
  scan50Ms: number;
}

/** probe.c beside the compiled bench (dist/bench/lib → bench/native) or in the source tree. */
function probeSource(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.join(here, '../native/probe.c'), path.join(here, '../../../bench/native/probe.c')]) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error('bench/native/probe.c not found');
}

export function measureNative(): NativeBaseline | { skipped: string } {
  let src: string;
  try {
    src = probeSource();
  } catch (e) {
    return { skipped: (e as Error).message };
  }
  const text = fs.readFileSync(src);
  const bin = path.join(os.tmpdir(), `postcopy-probe-${createHash('sha256').update(text).digest('hex').slice(0, 12)}`);
  try {
    if (!fs.existsSync(bin)) execFileSync('gcc', ['-O2', '-mavx2', '-msse4.1', src, '-o', bin], { stdio: 'pipe' });
  } catch (e) {
    return { skipped: `gcc could not build the C baseline (${(e as Error).message.split('\n')[0]})` };
  }
  return JSON.parse(execFileSync(bin, { encoding: 'utf8' })) as NativeBaseline;
}
