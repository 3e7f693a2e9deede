/**
 * CPU time and page faults from Linux's /proc stat files: of a process (all
 * threads, /proc/PID/stat) or of one thread (/proc/self/task/TID/stat).
 */
import fs from 'node:fs';

/** CPU time and minor page faults read from one stat file. */
export interface ProcCounters {
  userMs: number;
  sysMs: number;
  minflt: number;
}

/** Clock ticks per second of /proc times (USER_HZ; 100 on Linux/x86). */
const USER_HZ = 100;

/** Reads a stat file (undefined when the process or thread is gone). */
export function statCounters(file: string): ProcCounters | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after "(comm)": state is field 3; minflt 10, utime 14, stime 15 (1-based).
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { minflt: Number(f[7]), userMs: (Number(f[11]) * 1000) / USER_HZ, sysMs: (Number(f[12]) * 1000) / USER_HZ };
}

/** Reads /proc/PID/stat (undefined when the process is gone). */
export function procCounters(pid: number | undefined): ProcCounters | undefined {
  return pid === undefined ? undefined : statCounters(`/proc/${pid}/stat`);
}

/** b - a, field by field. */
export function counterDelta(a: ProcCounters | undefined, b: ProcCounters | undefined): ProcCounters {
  if (!a || !b) return { userMs: NaN, sysMs: NaN, minflt: NaN };
  return { userMs: b.userMs - a.userMs, sysMs: b.sysMs - a.sysMs, minflt: b.minflt - a.minflt };
}
