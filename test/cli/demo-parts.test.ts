/**
 * The pieces of `postcopy demo` without VMs: the event timeline it waits on
 * (and the failure messages it gives), the progress/story writer, the
 * progress line, the pacing, and the guest image.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DEMO, demoPacing } from '../../src/cli/demo/options.js';
import { Reporter, micros, progressLine, size, storyLine, type MigrateInfo } from '../../src/cli/demo/report.js';
import { Timeline, writeGuestImage, type DemoVm, type TimelineEntry } from '../../src/cli/demo/vms.js';

const MiB = 1 << 20;

/** A DemoVm whose QMP client is a bare EventEmitter (only events are used by the timeline). */
function fakeVm(side: DemoVm['side']): { vm: DemoVm; emit: (event: string, data?: object) => void } {
  const qmp = new EventEmitter();
  const vm = { side, qmp, child: undefined, stderr: () => '' } as unknown as DemoVm;
  return { vm, emit: (event, data) => qmp.emit('event', { event, data, timestamp: { seconds: 0, microseconds: 0 } }) };
}

describe('Timeline', () => {
  it('keeps MIGRATION statuses and STOP/RESUME per side, in order; ignores other events', () => {
    const seen: TimelineEntry[] = [];
    const tl = new Timeline((e) => seen.push(e));
    const s = fakeVm('source');
    const d = fakeVm('destination');
    tl.follow(s.vm);
    tl.follow(d.vm);
    s.emit('MIGRATION', { status: 'setup' });
    s.emit('MIGRATION_PASS', { pass: 1 });
    d.emit('MIGRATION', { status: 'active' });
    s.emit('STOP');
    s.emit('MIGRATION', { status: 'postcopy-active' });
    d.emit('RESUME');
    s.emit('MIGRATION', { status: 'postcopy-paused' });
    s.emit('MIGRATION', { status: 'postcopy-active' });
    expect(tl.sequence('source')).toEqual(['setup', 'STOP', 'postcopy-active', 'postcopy-paused', 'postcopy-active']);
    expect(tl.sequence('destination')).toEqual(['active', 'RESUME']);
    expect(seen.map((e) => `${e.side}:${e.what}`)).toEqual([
      'source:setup', 'destination:active', 'source:STOP', 'source:postcopy-active', 'destination:RESUME',
      'source:postcopy-paused', 'source:postcopy-active',
    ]);
    expect(tl.find('source', 'postcopy-active', 2)).toBe(tl.entries[6]);
    expect(tl.find('source', 'postcopy-active', 3)).toBeUndefined();
  });

  it('wait: resolves at the nth occurrence, even one already seen', async () => {
    const tl = new Timeline(() => undefined);
    const s = fakeVm('source');
    tl.follow(s.vm);
    s.emit('MIGRATION', { status: 'postcopy-active' });
    await expect(tl.wait('source', 'postcopy-active', 1, 1000)).resolves.toMatchObject({ what: 'postcopy-active' });
    const second = tl.wait('source', 'postcopy-active', 2, 1000);
    s.emit('MIGRATION', { status: 'postcopy-paused' });
    s.emit('MIGRATION', { status: 'postcopy-active' });
    await expect(second).resolves.toBe(tl.entries[2]);
  });

  it('wait: fails at once when the side fails, and after the timeout, naming what it saw', async () => {
    const tl = new Timeline(() => undefined);
    const d = fakeVm('destination');
    tl.follow(d.vm);
    d.emit('MIGRATION', { status: 'active' });
    const p = tl.wait('destination', 'completed', 1, 10_000);
    d.emit('MIGRATION', { status: 'failed' });
    await expect(p).rejects.toThrow('the destination went failed while the demo waited for completed (active → failed)');
    await expect(tl.wait('destination', 'postcopy-active', 1, 30)).rejects.toThrow(
      'the destination went failed while the demo waited for postcopy-active',
    );
    const s = fakeVm('source');
    tl.follow(s.vm);
    await expect(tl.wait('source', 'active', 1, 30)).rejects.toThrow('no active on the source within 0.03 s (source so far: nothing)');
  });
});

describe('Reporter', () => {
  function sink(isTTY: boolean): { w: NodeJS.WriteStream; text: () => string } {
    let text = '';
    const w = { isTTY, write: (s: string) => ((text += s), true) } as unknown as NodeJS.WriteStream;
    return { w, text: () => text };
  }

  it('not a terminal: a progress line at most every 500 ms, story lines untouched', () => {
    const lines: string[] = [];
    const e = sink(false);
    const r = new Reporter((s) => lines.push(s), e.w);
    r.progress('p1');
    r.progress('p2'); // within 500 ms: dropped
    r.line('story');
    expect(e.text()).toBe('p1\n');
    expect(lines).toEqual(['story']);
  });

  it('a terminal: the progress line is redrawn in place and cleared before a story line', () => {
    const lines: string[] = [];
    const e = sink(true);
    const r = new Reporter((s) => lines.push(s), e.w);
    r.progress('p1');
    r.progress('p2');
    r.line('story');
    r.line('story2'); // nothing to clear any more
    expect(e.text()).toBe('\r\x1b[Kp1\r\x1b[Kp2\r\x1b[K');
    expect(lines).toEqual(['story', 'story2']);
  });
});

describe('formatting', () => {
  it('sizes, latencies, story lines', () => {
    expect(size(0)).toBe('0 B');
    expect(size(512)).toBe('0.5 KiB');
    expect(size(3 * MiB + MiB / 2)).toBe('3.5 MiB');
    expect(micros(188.4)).toBe('188 µs');
    expect(micros(6712)).toBe('6.71 ms');
    expect(storyLine(1234, 'source', 'MIGRATION active')).toBe('[  1.23 s] source       MIGRATION active');
  });

  it('the progress line: pass, remaining, rate, sent; requests and guest faults only in postcopy', () => {
    const ram = { transferred: 8 * MiB, remaining: 24 * MiB, total: 32 * MiB, duplicate: 0, normal: 0, mbps: 33.4, 'dirty-sync-count': 1, 'postcopy-requests': 7 };
    const pre: MigrateInfo = { status: 'active', ram };
    expect(progressLine(pre)).toBe('[######..................] active          pass  1  remaining   24.0 MiB  rate   33 Mbps  sent 8.0 MiB');
    const post = progressLine({ status: 'postcopy-active', ram }, { visits: 100, faults: 9, 'blocked-ms': 1, 'max-blocked-ms': 1 });
    expect(post).toMatch(/postcopy-active pass {2}1 .* requests 7 {2}guest faults 9$/);
  });
});

describe('pacing and the guest image', () => {
  it('bandwidths scale with the RAM, so each phase lasts about as long at any size', () => {
    const a = demoPacing({ ...DEFAULT_DEMO, ramMiB: 256 });
    const b = demoPacing({ ...DEFAULT_DEMO, ramMiB: 32 });
    expect(a.precopyBandwidth / b.precopyBandwidth).toBe(8);
    expect(a.postcopyBandwidth / b.postcopyBandwidth).toBe(8);
    // the first precopy pass (a quarter of RAM is data) takes about a second: XBZRLE starts after it
    expect(((256 * MiB) / 4 / a.precopyBandwidth) * 1000).toBeLessThanOrEqual(a.precopyMs);
    // with postcopy precopy must not converge on its own (the demo switches); precopy only it must
    expect(a.downtimeLimitMs).toBe(1);
    const p = demoPacing({ ...DEFAULT_DEMO, ramMiB: 16, postcopy: false });
    expect(p.downtimeLimitMs).toBe(300);
    expect(p.precopyBandwidth).toBeGreaterThanOrEqual(32 * MiB);
  });

  it('the image: the RAM size, the first MiB of every 4 MiB random, the rest zero', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'demo-image-'));
    try {
      const file = path.join(dir, 'ram');
      expect(writeGuestImage(file, 10)).toBe(3 * MiB); // 4+4+2 MiB chunks: 1 MiB data each
      const b = fs.readFileSync(file);
      expect(b.length).toBe(10 * MiB);
      const zeroPages = (from: number, to: number): number => {
        let n = 0;
        for (let p = from; p < to; p += 4096) if (b.subarray(p, p + 4096).every((x) => x === 0)) n++;
        return n;
      };
      for (const chunk of [0, 4 * MiB, 8 * MiB]) {
        expect(zeroPages(chunk, chunk + MiB)).toBe(0);
        expect(zeroPages(chunk + MiB, Math.min(chunk + 4 * MiB, 10 * MiB))).toBe((Math.min(chunk + 4 * MiB, 10 * MiB) - chunk - MiB) / 4096);
      }
      expect(b.subarray(0, MiB).equals(b.subarray(4 * MiB, 5 * MiB))).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
