/**
 * `postcopy demo` (`npm start`): option parsing, and the story it tells when
 * run for real as `node bin/postcopy.js demo` with a small guest — statuses
 * of both sides in QEMU's order, the cut, both sides paused, the recovery
 * handshake through the proxy, both active again, completion, a summary
 * whose figures hang together, and the RAM check — plus its failures.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DEMO, PRECOPY_DEMO_WORKLOAD, parseDemoArgs, runDemo } from '../../src/cli/demo.js';

const BIN = path.resolve(import.meta.dirname, '../../bin/postcopy.js');

function demo(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.once('exit', (code) => resolve({ code, stdout, stderr, ms: performance.now() - t0 }));
  });
}

interface StoryLine {
  t: number;
  who: string;
  text: string;
}

/** `[  1.23 s] source       MIGRATION active` lines. */
function storyLines(stdout: string): StoryLine[] {
  const out: StoryLine[] = [];
  for (const l of stdout.split('\n')) {
    const m = /^\[\s*(-?[\d.]+) s\] (\S+)\s+(.*)$/.exec(l);
    if (m) out.push({ t: Number(m[1]), who: m[2]!, text: m[3]! });
  }
  return out;
}

const statuses = (lines: StoryLine[], who: string): string[] =>
  lines.filter((l) => l.who === who && l.text.startsWith('MIGRATION ')).map((l) => l.text.slice('MIGRATION '.length));

/** Index of the first line matching, after index `from`. */
function indexOf(lines: StoryLine[], who: string, re: RegExp, from = -1): number {
  return lines.findIndex((l, i) => i > from && l.who === who && re.test(l.text));
}

/** A summary row's text. */
function row(stdout: string, name: string): string {
  const m = new RegExp(`^  ${name} +(.*)$`, 'm').exec(stdout);
  if (!m) throw new Error(`no '${name}' row in:\n${stdout}`);
  return m[1]!;
}

/** "188 µs" / "6.71 ms" → µs. */
function toUs(text: string): number {
  const m = /^([\d.]+) (µs|ms)$/.exec(text.trim());
  if (!m) throw new Error(`not a latency: '${text}'`);
  return Number(m[1]) * (m[2] === 'ms' ? 1000 : 1);
}

describe('parseDemoArgs', () => {
  it('no arguments: the whole story with the default guest', () => {
    expect(parseDemoArgs([])).toEqual({ ramMiB: 256, workload: DEFAULT_DEMO.workload, xbzrle: true, postcopy: true, cut: true, cutMode: 'reset' });
  });
  it('options: --no-postcopy implies no cut; --cut-mode kill', () => {
    expect(parseDemoArgs(['--ram', '64', '--no-xbzrle', '--no-postcopy'])).toMatchObject({ ramMiB: 64, xbzrle: false, postcopy: false, cut: false });
    // precopy only: a paced workload by default (the postcopy default never lets precopy converge), a given one kept
    expect(parseDemoArgs(['--no-postcopy'])).toMatchObject({ workload: PRECOPY_DEMO_WORKLOAD });
    expect(PRECOPY_DEMO_WORKLOAD).not.toBe(DEFAULT_DEMO.workload);
    expect(parseDemoArgs(['--no-postcopy', '--workload', 'pattern=seq,rate=10'])).toMatchObject({ workload: 'pattern=seq,rate=10' });
    expect(parseDemoArgs(['--no-cut'])).toMatchObject({ postcopy: true, cut: false });
    expect(parseDemoArgs(['--cut-mode', 'kill', '--workload', 'pattern=rand,rate=max'])).toMatchObject({ cutMode: 'kill', cut: true, workload: 'pattern=rand,rate=max' });
    expect(parseDemoArgs(['--ram', '8', '-h'])).toEqual({ help: true });
  });
  it('impossible options are refused with the reason', () => {
    expect(() => parseDemoArgs(['--ram', '0'])).toThrow("--ram takes a whole number of MiB, at least 8, not '0'");
    expect(() => parseDemoArgs(['--ram', '1.5'])).toThrow("not '1.5'");
    expect(() => parseDemoArgs(['--ram'])).toThrow('option --ram needs a value');
    expect(() => parseDemoArgs(['--cut-mode', 'blackhole'])).toThrow("--cut-mode must be reset or kill, not 'blackhole'");
    expect(() => parseDemoArgs(['--no-postcopy', '--cut-mode', 'kill'])).toThrow('--cut-mode needs postcopy');
    expect(() => parseDemoArgs(['--no-cut', '--cut-mode', 'kill'])).toThrow('--cut-mode contradicts --no-cut');
    expect(() => parseDemoArgs(['--workload', 'pattern=zigzag'])).toThrow("workload: pattern must be seq, rand or hot, not 'zigzag'");
    expect(() => parseDemoArgs(['--postcopy'])).toThrow("unknown option '--postcopy'");
  });
});

describe('postcopy demo, run as a command', () => {
  it('tells the story: precopy → postcopy (faults) → cut → both paused → recovery → completed, RAM identical', async () => {
    const r = await demo(['--ram', '32']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const lines = storyLines(r.stdout);
    // the timeline only moves forward
    for (let i = 1; i < lines.length; i++) expect(lines[i]!.t).toBeGreaterThanOrEqual(lines[i - 1]!.t);
    // QEMU 7.2's status sequences (SPEC §8.5), as the MIGRATION events arrived
    expect(statuses(lines, 'source')).toEqual(['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed']);
    expect(statuses(lines, 'destination')).toEqual([
      'setup', 'active', 'postcopy-active', 'postcopy-paused', 'setup', 'postcopy-recover', 'postcopy-active', 'completed',
    ]);
    // the order of the story across both sides
    const start = indexOf(lines, 'demo', /^migrate-start-postcopy/);
    const stop = indexOf(lines, 'source', /^STOP/);
    const run = indexOf(lines, 'destination', /^RESUME/);
    const cut = indexOf(lines, 'proxy', /^cut the link \(reset/);
    const sPaused = indexOf(lines, 'source', /^MIGRATION postcopy-paused/);
    const dPaused = indexOf(lines, 'destination', /^MIGRATION postcopy-paused/);
    const recover = indexOf(lines, 'demo', /^migrate-recover /);
    const sBack = indexOf(lines, 'source', /^MIGRATION postcopy-active/, recover);
    const dBack = indexOf(lines, 'destination', /^MIGRATION postcopy-active/, recover);
    const done = indexOf(lines, 'source', /^MIGRATION completed/);
    expect(start).toBeGreaterThan(indexOf(lines, 'source', /^MIGRATION active/));
    expect(stop).toBeGreaterThan(start);
    expect(run).toBeGreaterThan(stop);
    expect(cut).toBeGreaterThan(run);
    expect(Math.min(sPaused, dPaused)).toBeGreaterThan(cut);
    // the guest was faulting through the link when it was cut
    expect(Number(/after (\d+) page requests/.exec(lines[cut]!.text)?.[1])).toBeGreaterThan(0);
    expect(recover).toBeGreaterThan(Math.max(sPaused, dPaused));
    expect(Math.min(sBack, dBack)).toBeGreaterThan(recover);
    expect(done).toBeGreaterThan(Math.max(sBack, dBack));
    // the recovery handshake, decoded by the proxy on the new connection (SPEC §7.2)
    const hs = lines.filter((l) => l.who === 'proxy' && /^[→←] /.test(l.text)).map((l) => l.text.split(' ').slice(0, 2).join(' '));
    expect(hs).toEqual(['→ RECV_BITMAP', '← RECV_BITMAP', '← RECV_BITMAP_DATA', '→ POSTCOPY_RESUME', '← RESUME_ACK']);
    const received = /RECV_BITMAP_DATA ram: (\d+) pages received/.exec(r.stdout);
    expect(Number(received?.[1])).toBeGreaterThan(0);
    expect(Number(received?.[1])).toBeLessThan((32 << 20) / 4096); // paused mid-way: not everything was there
    // XBZRLE was at work before the switch — unless the demo said it waited in vain (a very slow host)
    const xbzrle = Number(/(\d+) XBZRLE \(/.exec(row(r.stdout, 'pages'))?.[1] ?? 0);
    if (!/XBZRLE has encoded no page after .* switching anyway/.test(r.stdout)) expect(xbzrle).toBeGreaterThan(0);
    // the summary: requests and faults happened, latencies are ordered, the recovery was timed
    const requests = Number(/^(\d+) page requests/.exec(row(r.stdout, 'postcopy'))?.[1]);
    const faults = Number(/guest: (\d+) faults/.exec(row(r.stdout, 'postcopy'))?.[1]);
    expect(requests).toBeGreaterThan(0);
    expect(faults).toBeGreaterThan(0);
    const lat = /p50 (.+?), p99 (.+?), max (.+?) over (\d+) faults/.exec(row(r.stdout, 'fault latency'));
    expect(lat, row(r.stdout, 'fault latency')).not.toBeNull();
    const [p50, p99, max] = [toUs(lat![1]!), toUs(lat![2]!), toUs(lat![3]!)];
    expect(p50).toBeLessThanOrEqual(p99);
    expect(p99).toBeLessThanOrEqual(max);
    expect(Number(lat![4])).toBeGreaterThan(0);
    const rec = /cut → paused: source (\d+) ms, destination (\d+) ms; migrate-recover → both postcopy-active (\d+) ms; cut → active again (\d+) ms/.exec(row(r.stdout, 'recovery'));
    expect(rec, row(r.stdout, 'recovery')).not.toBeNull();
    expect(Number(rec![4])).toBeGreaterThanOrEqual(Number(rec![3]));
    // the migration connection was cut; the recovery connection carried the rest of postcopy
    const px = /^migration connection ([\d.]+) (MiB|KiB) → .*, then cut \(reset\); recovery connection ([\d.]+) (MiB|KiB) → [^,]*$/.exec(row(r.stdout, 'proxy'));
    expect(px, row(r.stdout, 'proxy')).not.toBeNull();
    expect(Number(px![3]) * (px![4] === 'MiB' ? 1024 : 1)).toBeGreaterThan(64); // KiB: pages went on flowing after the recovery
    expect(row(r.stdout, 'run states')).toBe('source postmigrate, destination running');
    // the RAM check names the same digest on both sides
    const v = /^verify: RAM identical — destination ram ([0-9a-f]{16})… = source ram ([0-9a-f]{16})…/m.exec(r.stdout);
    expect(v, r.stdout).not.toBeNull();
    expect(v![1]).toBe(v![2]);
    // progress went to stderr, with the postcopy counters
    expect(r.stderr).toMatch(/\] active +pass +1 +remaining/);
    expect(r.stderr).toMatch(/\] postcopy-active +pass .* requests \d+ +guest faults \d+/);
    console.log(`demo --ram 32: ${(r.ms / 1000).toFixed(1)} s wall; ${row(r.stdout, 'total time')}; ${row(r.stdout, 'recovery')}`);
  }, 90_000);

  it('--no-postcopy: precopy only, no proxy, RAM identical', async () => {
    const r = await demo(['--ram', '16', '--no-postcopy']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const lines = storyLines(r.stdout);
    expect(statuses(lines, 'source')).toEqual(['setup', 'active', 'completed']);
    expect(statuses(lines, 'destination')).toEqual(['setup', 'active', 'completed']);
    expect(lines.some((l) => l.who === 'proxy')).toBe(false);
    expect(r.stdout).not.toMatch(/^  (postcopy|recovery|proxy) /m);
    expect(r.stdout).toMatch(/^verify: RAM identical/m);
  }, 60_000);

  it('--help prints the options and exits 0; an impossible option exits 2 with the reason and the usage', async () => {
    const h = await demo(['--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^usage: postcopy demo /);
    for (const o of ['--ram', '--workload', '--no-xbzrle', '--no-postcopy', '--no-cut', '--cut-mode']) expect(h.stdout).toContain(o);
    const bad = await demo(['--ram', '0']);
    expect(bad.code).toBe(2);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/^postcopy demo: --ram takes a whole number of MiB, at least 8, not '0'\n\nusage: postcopy demo/);
  });

  it('a VM that cannot start: exit 1 with the error of the VM itself', async () => {
    const out: string[] = [];
    // bypasses the option check on purpose: the source `postcopy vm` itself refuses the workload
    const code = await runDemo({ ...DEFAULT_DEMO, ramMiB: 16, workload: 'pattern=zigzag' }, (s) => out.push(s));
    expect(code).toBe(1);
    expect(out.join('\n')).toMatch(/^demo failed: the source vm exited at start \(\d+\): .*pattern must be seq, rand or hot, not 'zigzag'/m);
  });
});
