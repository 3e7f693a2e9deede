/**
 * Postcopy state rules and postcopy RAM-path errors with QEMU's texts: what
 * fails before RUNNING, what pauses after it.
 */
import { describe, expect, it } from 'vitest';
import { encodeCommand } from '../../src/wire/command.js';
import { MigCmd, SectionType } from '../../src/wire/constants.js';
import { encodeFooter, encodeSection } from '../../src/wire/stream.js';
import type { ByteWriter } from '../../src/wire/writer.js';
import { writeCommand, writeHeader, writeRamSetup, writeSectionStart } from './stream-helpers.js';
import { TP, channel, destination, packageBlob, precopyStart, sourceRam, switchover, until } from './postcopy-script.js';

/** Runs a whole scripted stream; returns the final status and error-desc. */
async function run(build: (w: ByteWriter) => void, opts: Parameters<typeof destination>[0] = {}) {
  const dst = destination(opts);
  const s = channel();
  const done = dst.load(s.b);
  build(s.w);
  s.send();
  s.a.end();
  const status = await done;
  return { dst, status, desc: dst.queryMigrate()['error-desc'] };
}

const mem = sourceRam(11);
const start = (w: ByteWriter): void => {
  writeHeader(w, 'none');
  encodeCommand(w, { kind: 'openReturnPath' });
};
const advise = (w: ByteWriter, summary = TP, tps = TP): void =>
  encodeCommand(w, { kind: 'postcopyAdvise', ram: { pageSizeSummary: summary, targetPageSize: tps } });
const setup = (w: ByteWriter): void => {
  writeSectionStart(w, SectionType.START, 2, 'ram', 0, 4);
  writeRamSetup(w, [{ idstr: 'ram', usedLength: 16 * TP }]);
  encodeFooter(w, 2);
};
const listen = (w: ByteWriter): void => encodeCommand(w, { kind: 'postcopyListen' });
const runCmd = (w: ByteWriter): void => encodeCommand(w, { kind: 'postcopyRun' });
const discard = (w: ByteWriter, blockName = 'ram'): void =>
  encodeCommand(w, { kind: 'postcopyRamDiscard', blockName, ranges: [{ start: 0, length: TP }] });

describe('postcopy state rules (fail before RUNNING, QEMU texts)', () => {
  const cases: [string, (w: ByteWriter) => void, string][] = [
    ['RUN before LISTEN', (w) => (advise(w), runCmd(w)), 'CMD_POSTCOPY_RUN in wrong postcopy state (1)'],
    ['RUN without ADVISE', (w) => runCmd(w), 'CMD_POSTCOPY_RUN in wrong postcopy state (0)'],
    ['LISTEN without ADVISE', (w) => listen(w), 'CMD_POSTCOPY_LISTEN in wrong postcopy state (0)'],
    ['ADVISE twice', (w) => (advise(w), advise(w)), 'CMD_POSTCOPY_ADVISE in wrong postcopy state (1)'],
    ['DISCARD without ADVISE', (w) => (setup(w), discard(w)), 'CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state (0)'],
    ['DISCARD after LISTEN', (w) => (advise(w), setup(w), listen(w), discard(w)), 'CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state (3)'],
    ['LISTEN twice', (w) => (advise(w), listen(w), listen(w)), 'CMD_POSTCOPY_LISTEN in wrong postcopy state (3)'],
    ['ADVISE after LISTEN', (w) => (advise(w), listen(w), advise(w)), 'CMD_POSTCOPY_ADVISE in wrong postcopy state (3)'],
    ['DISCARD of an unknown block', (w) => (advise(w), setup(w), discard(w, 'nope')), "ram_discard_range: Failed to find block 'nope'"],
    ['mismatched page sizes', (w) => advise(w, 0x200000), 'Postcopy needs matching RAM page sizes (s=200000 d=1000)'],
    ['mismatched target page size', (w) => advise(w, TP, 0x2000), 'Postcopy needs matching target page sizes (s=8192 d=4096)'],
    [
      'DISCARD range past the block',
      (w) => (advise(w), setup(w), encodeCommand(w, { kind: 'postcopyRamDiscard', blockName: 'ram', ranges: [{ start: 15 * TP, length: 2 * TP }] })),
      "ram_block_discard_range: Overrun block 'ram' (61440/2000/10000)",
    ],
    ['DISCARD bad version', (w) => (advise(w), setup(w), writeCommand(w, MigCmd.POSTCOPY_RAM_DISCARD, discardPayload(1))), 'CMD_POSTCOPY_RAM_DISCARD invalid version (1)'],
  ];
  for (const [name, body, text] of cases) {
    it(name, async () => {
      const { status, desc, dst } = await run((w) => (start(w), body(w)));
      expect(status).toBe('failed');
      expect(desc).toBe(text);
      expect(dst.postcopyState).not.toBe('running');
    });
  }

  it('a package without RUN or EOF fails (short read inside the blob)', async () => {
    const blob = new Uint8Array(5);
    blob.set([SectionType.COMMAND, 0, MigCmd.POSTCOPY_LISTEN, 0, 0]);
    const { status, desc, dst } = await run((w) => {
      start(w);
      advise(w);
      setup(w);
      encodeCommand(w, { kind: 'packaged', length: blob.length });
      w.bytes(blob);
    });
    expect(status).toBe('failed');
    expect(desc).toMatch(/^section type: stream ended/);
    expect(dst.postcopyState).toBe('listening');
  });

  it('a page sent twice after LISTEN (package not yet at RUN) fails: placement would be EEXIST', async () => {
    const blob = packageBlob((w) => {
      encodeSection(w, { kind: 'part', sectionId: 2 });
      w.be64(0 + 0x08);
      w.cstr8('ram');
      w.bytes(mem.subarray(0, TP));
      w.be64(0x10);
      encodeFooter(w, 2);
    });
    const { status, desc } = await run((w) => {
      const s = { w } as unknown as Parameters<typeof precopyStart>[0];
      precopyStart(s);
      encodeSection(w, { kind: 'part', sectionId: 2 });
      w.be64(0 + 0x08);
      w.cstr8('ram');
      w.bytes(mem.subarray(0, TP));
      w.be64(0x10);
      encodeFooter(w, 2);
      encodeCommand(w, { kind: 'packaged', length: blob.length });
      w.bytes(blob);
    });
    expect(status).toBe('failed');
    expect(desc).toBe('postcopy_place_page: File exists copy host: ram+0x0 (size: 4096)');
  });

  it('illegal resume / RECV_BITMAP outside postcopy-recover are ignored (QEMU logs them)', async () => {
    const { status, dst } = await run((w) => {
      start(w);
      encodeCommand(w, { kind: 'postcopyAdvise', ram: null });
      setup(w);
      encodeCommand(w, { kind: 'recvBitmap', blockName: 'ram' });
      encodeCommand(w, { kind: 'postcopyResume' });
      encodeSection(w, { kind: 'eof' });
    }, { postcopyRam: false });
    expect(status).toBe('completed');
    expect(dst.warnings).toContain('illegal resume received');
    expect(dst.recvBitmaps).toEqual([]);
  });

  it('RECV_BITMAP of an unknown block fails', async () => {
    const { status, desc } = await run((w) => (start(w), setup(w), encodeCommand(w, { kind: 'recvBitmap', blockName: 'nope' })));
    expect(status).toBe('failed');
    expect(desc).toBe("loadvm_handle_recv_bitmap: block 'nope' not found");
  });
});

function discardPayload(version: number): Uint8Array {
  const name = Buffer.from('ram');
  const p = new Uint8Array(3 + name.length + 16);
  p[0] = version;
  p[1] = name.length;
  p.set(name, 2);
  return p;
}

describe('postcopy RAM path after RUN: errors pause, never fail', () => {
  async function running() {
    const dst = destination();
    const s = channel();
    const done = dst.load(s.b);
    precopyStart(s);
    s.part(mem, [0, 1]);
    switchover(s, []);
    s.send();
    await until(() => dst.postcopyState === 'running');
    return { dst, s, done };
  }

  it('XBZRLE in postcopy → postcopy-paused with QEMU text; received pages and the fault kept', async () => {
    const { dst, s, done } = await running();
    const fault = dst.ensure('ram', 5 * TP);
    expect(await s.nextNonPong()).toEqual({ kind: 'reqPagesId', start: 5 * TP, length: TP, blockName: 'ram' });
    encodeSection(s.w, { kind: 'part', sectionId: 2 });
    s.ram.page(s.w, 'ram', 2 * TP, mem.subarray(2 * TP, 3 * TP));
    s.ram.xbzrle(s.w, 'ram', 3 * TP, new Uint8Array([1, 0, 1, 0]));
    s.send();
    await until(() => dst.status === 'postcopy-paused');
    expect(dst.pauseReason).toBe('Unknown combination of migration flags: 0x60 (postcopy mode)');
    expect(dst.isReceived('ram', 0, 3 * TP)).toBe(true);
    expect(dst.outstandingFaults).toBe(1);
    expect(dst.status).toBe('postcopy-paused');
    // not failed: load() still pending, the fault still waits
    let settled = false;
    void Promise.race([done, fault]).then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    expect(dst.queryMigrate()).toEqual({ status: 'postcopy-paused', 'x-postcopy-fault-latency': { count: 0, 'p50-us': 0, 'p99-us': 0, 'max-us': 0 } });
  });

  it('a duplicate page in RUNNING → postcopy-paused (EEXIST), the placed page untouched', async () => {
    const { dst, s } = await running();
    encodeSection(s.w, { kind: 'part', sectionId: 2 });
    s.ram.page(s.w, 'ram', 1 * TP, new Uint8Array(TP).fill(0x5a));
    s.send();
    await until(() => dst.status === 'postcopy-paused');
    expect(dst.pauseReason).toBe('postcopy_place_page: File exists copy host: ram+0x1000 (size: 4096)');
    expect(Buffer.from(dst.blocks[0]!.bytes.subarray(TP, 2 * TP)).equals(Buffer.from(mem.subarray(TP, 2 * TP)))).toBe(true);
  });

  it('an unknown section in RUNNING pauses; a truncated stream (FIN) pauses', async () => {
    const a = await running();
    a.s.w.u8(0x42);
    a.s.send();
    await until(() => a.dst.status === 'postcopy-paused');
    expect(a.dst.pauseReason).toBe('Unknown savevm section type 66');
    const b = await running();
    encodeSection(b.s.w, { kind: 'part', sectionId: 2 });
    b.s.w.be64(5 * TP + 0x08);
    b.s.send();
    b.s.a.end();
    await until(() => b.dst.status === 'postcopy-paused');
    expect(b.dst.pauseReason).toMatch(/stream ended/);
  });

  it('pause(): only in postcopy-active (QEMU text), then postcopy-paused', async () => {
    const dst = destination();
    const s = channel();
    void dst.load(s.b);
    precopyStart(s);
    s.send();
    await until(() => dst.postcopyState === 'advise');
    expect(() => dst.pause()).toThrow('migrate-pause is currently only supported during postcopy-active state');
    await expect(dst.recover(channel().b)).rejects.toThrow('Migrate recover can only be run when postcopy is paused.');
    switchover(s, []);
    s.send();
    await until(() => dst.postcopyState === 'running');
    dst.pause();
    expect(dst.status).toBe('postcopy-paused');
    expect(s.b.destroyed).toBe(true);
    expect(() => dst.pause()).toThrow('migrate-pause is currently only supported during postcopy-active state');
  });

  it('silent link: with a fault outstanding and nothing received for the timeout → paused', async () => {
    const dst = destination({ keepaliveTimeoutMs: 150 });
    const s = channel();
    void dst.load(s.b);
    precopyStart(s);
    switchover(s, []);
    s.send();
    await until(() => dst.postcopyState === 'running');
    // no fault outstanding: silence is fine
    await new Promise((r) => setTimeout(r, 300));
    expect(dst.status).toBe('postcopy-active');
    const t0 = performance.now();
    void dst.ensure('ram', 4 * TP);
    await until(() => dst.status === 'postcopy-paused', 2000);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    expect(dst.pauseReason).toMatch(/no data from the source for 150 ms/);
  });
});
