/**
 * Summarises a V8 `.cpuprofile` (node --cpu-prof) over a time window:
 * self time per layer of this project (src/<layer>/...), per JS function,
 * and per "owner" (the nearest function of ours up the stack, so time spent
 * in Node's streams or in native code is charged to the code that called it).
 * Sample times are CLOCK_MONOTONIC µs, the clock of process.hrtime, so a
 * window measured in the benchmark process selects the same span here.
 */
import fs from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Result of {@link summariseProfile}: milliseconds of self time by key, largest first. */
export interface ProfileSummary {
  /** Milliseconds of samples inside the window (idle included). */
  windowMs: number;
  byLayer: Array<[string, number]>;
  byFunction: Array<[string, number]>;
  byOwner: Array<[string, number]>;
}

/** Where a frame belongs: `src/<layer>`, `wasm`, `node:<module>`, `(gc)`, `(idle)`, `(native)`. */
export function frameLayer(f: CallFrame): string {
  const name = f.functionName;
  if (name === '(garbage collector)') return '(gc)';
  if (name === '(idle)') return '(idle)';
  if (name === '(program)' || name === '(root)') return '(program)';
  if (f.url.startsWith('wasm://') || f.url.endsWith('.wasm')) return 'wasm hot path';
  const src = /\/dist\/src\/([^/]+)\//.exec(f.url);
  if (src) return `src/${src[1]}`;
  if (f.url.startsWith('node:')) {
    const m = /^node:(?:internal\/)?([^/]+(?:\/[^/]+)?)/.exec(f.url);
    return `node:${m ? m[1] : f.url.slice(5)}`;
  }
  if (f.url === '') return '(native)';
  return f.url.includes('node_modules') ? 'node_modules' : 'other';
}

function frameLabel(f: CallFrame): string {
  const file = f.url.replace(/^.*\/dist\//, '').replace(/^file:\/\//, '');
  return `${f.functionName || '(anonymous)'} ${file ? `${file}:${f.lineNumber + 1}` : ''}`.trim();
}

function add(map: Map<string, number>, key: string, us: number): void {
  map.set(key, (map.get(key) ?? 0) + us);
}

function sorted(map: Map<string, number>): Array<[string, number]> {
  return [...map].map(([k, us]): [string, number] => [k, us / 1000]).sort((a, b) => b[1] - a[1]);
}

/**
 * Reads `file` and sums self time of samples whose timestamp (µs, monotonic)
 * lies in [fromUs, toUs]; the whole profile when no window is given.
 */
export function summariseProfile(file: string, fromUs = -Infinity, toUs = Infinity): ProfileSummary {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) byId.set(n.id, n);
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const ownerOf = new Map<number, string>();
  const owner = (id: number): string => {
    const cached = ownerOf.get(id);
    if (cached !== undefined) return cached;
    let cur: number | undefined = id;
    let label = '(no caller of ours)';
    while (cur !== undefined) {
      const f = byId.get(cur)!.callFrame;
      if (frameLayer(f).startsWith('src/')) {
        label = frameLabel(f);
        break;
      }
      cur = parent.get(cur);
    }
    ownerOf.set(id, label);
    return label;
  };
  const layers = new Map<string, number>();
  const fns = new Map<string, number>();
  const owners = new Map<string, number>();
  let t = p.startTime;
  let windowUs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i]!;
    // A sample's time is the span until the next sample.
    const dt = p.timeDeltas[i + 1] ?? 0;
    if (t < fromUs || t > toUs) continue;
    windowUs += dt;
    const node = byId.get(p.samples[i]!)!;
    const layer = frameLayer(node.callFrame);
    add(layers, layer, dt);
    if (layer === '(idle)') continue;
    add(fns, `${frameLabel(node.callFrame)} [${layer}]`, dt);
    add(owners, owner(node.id), dt);
  }
  return { windowMs: windowUs / 1000, byLayer: sorted(layers), byFunction: sorted(fns), byOwner: sorted(owners) };
}
