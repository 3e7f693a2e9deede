/**
 * Interop: the XBZRLE encoder against real QEMU 7.2. The test guest
 * (test/guest) rewrites pages while QEMU migrates into a file with xbzrle on.
 * Replaying the stream, the destination's copy of a page before an XBZRLE
 * record is what QEMU's cache held (the cache equals what was sent), so
 * re-encoding (page before, page after) with our encoder must give QEMU's
 * record byte for byte, and QEMU's counters must match what we see.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { ByteCursor } from '../../src/wire/cursor.js';
import { RamRecordDecoder } from '../../src/wire/ram.js';
import { decodeFooter, decodeSection, decodeStreamStart } from '../../src/wire/stream.js';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { xbzrleDecode, xbzrleEncode } from '../../src/hotpath/api.js';
import { DEFAULT_GUEST_PARAMS, type GuestParams } from '../guest/check.js';
import { startGuestVm, type GuestVm } from '../guest/vm.js';
import { hasQemu, qemuSkipReason, waitForStatus } from '../interop/harness/index.js';

const P = 4096;
const PARAMS: GuestParams = { ...DEFAULT_GUEST_PARAMS, size: 8 << 20, n: 64, report: 4 };

let vm: GuestVm | undefined;
afterAll(async () => {
  await vm?.destroy();
});

interface Replay {
  xbzrle: number;
  identical: number;
  simdScalarSame: number;
  mismatches: string[];
  normal: number;
  zero: number;
  /** QEMU's accounting of XBZRLE bytes: record size - 8 = (1 + idstr unless CONTINUE) + 3 + L. */
  xbzrleBytes: number;
}

/** Replays the RAM part of a precopy stream, re-encoding every XBZRLE record. */
function replay(bytes: Uint8Array): Replay {
  const c = new ByteCursor(bytes);
  decodeStreamStart(c);
  const ram = new RamRecordDecoder();
  const blocks = new Map<string, Uint8Array>();
  const hp = Hotpath.create();
  const o = hp.alloc(3 * P);
  const out: Replay = { xbzrle: 0, identical: 0, simdScalarSame: 0, mismatches: [], normal: 0, zero: 0, xbzrleBytes: 0 };
  for (;;) {
    const s = decodeSection(c);
    if (s.kind === 'command') continue;
    if (s.kind !== 'start' && s.kind !== 'part' && s.kind !== 'end') break; // device state or EOF: RAM is done
    if (s.kind === 'start' && s.idstr !== 'ram') throw new Error(`unexpected live section ${s.idstr}`);
    for (;;) {
      const rec = ram.decode(c);
      if (rec.kind === 'eos') break;
      if (rec.kind === 'memSize') {
        for (const b of rec.blocks) blocks.set(b.idstr, new Uint8Array(b.usedLength));
        continue;
      }
      const img = blocks.get(rec.block)!;
      const page = img.subarray(rec.offset, rec.offset + P);
      if (rec.kind === 'zero') {
        page.fill(rec.fill);
        out.zero++;
      } else if (rec.kind === 'page') {
        page.set(rec.data);
        out.normal++;
      } else if (rec.kind === 'xbzrle') {
        out.xbzrle++;
        out.xbzrleBytes += (rec.continued ? 0 : 1 + Buffer.byteLength(rec.block)) + 3 + rec.data.length;
        const before = page.slice();
        xbzrleDecode(rec.data, page);
        const ours = xbzrleEncode(before, page);
        const same = ours !== null && Buffer.from(ours).equals(Buffer.from(rec.data));
        if (same) out.identical++;
        else if (out.mismatches.length < 5) out.mismatches.push(`${rec.block}@0x${rec.offset.toString(16)}: ours ${ours?.length}, QEMU ${rec.data.length}`);
        // the scalar twin agrees too
        const m = hp.bytes();
        m.set(before, o);
        m.set(page, o + P);
        const n = hp.xbzrleEncodeScalarAt(o, o + P, o + 2 * P);
        if (n === rec.data.length && Buffer.from(m.subarray(o + 2 * P, o + 2 * P + n)).equals(Buffer.from(rec.data))) out.simdScalarSame++;
      }
    }
    decodeFooter(c, s.sectionId, 'ram');
  }
  return out;
}

describe.skipIf(!hasQemu)(`XBZRLE encoder vs real QEMU 7.2 records ${qemuSkipReason}`, () => {
  let info: Record<string, unknown>;
  let file: string;

  beforeAll(async () => {
    vm = await startGuestVm({ params: PARAMS, ramMiB: 32 });
    await vm.waitSerial(() => vm!.lastReportedPass() >= 8, 20_000);
    const qmp = vm.qmp;
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] });
    await qmp.execute('migrate-set-parameters', { 'xbzrle-cache-size': 16 << 20, 'max-bandwidth': 20_000_000, 'downtime-limit': 1 });
    file = path.join(vm.dir, 'xbzrle-enc.bin');
    await qmp.execute('migrate', { uri: `exec:cat > ${file}.part && mv ${file}.part ${file}` });
    const deadline = Date.now() + 30_000;
    for (;;) {
      const i = await qmp.execute<{ status: string; ram?: Record<string, number> }>('query-migrate');
      if ((i.ram?.['dirty-sync-count'] ?? 0) >= 4 || i.status === 'completed') break;
      if (i.status === 'failed' || Date.now() > deadline) throw new Error(`migration: ${JSON.stringify(i)}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1_000_000_000, 'downtime-limit': 30_000 });
    info = await waitForStatus(qmp, 'completed', 30_000);
    while (!fs.existsSync(file)) await new Promise((res) => setTimeout(res, 20));
  }, 90_000);

  it('every XBZRLE record QEMU sent re-encodes byte-identically (SIMD and scalar)', () => {
    const r = replay(new Uint8Array(fs.readFileSync(file)));
    const cache = info['xbzrle-cache'] as Record<string, number>;
    const ram = info['ram'] as Record<string, number>;
    console.log(`XBZRLE records ${r.xbzrle}, identical ${r.identical}, QEMU xbzrle-cache ${JSON.stringify(cache)}`);
    expect(r.mismatches).toEqual([]);
    expect(r.xbzrle).toBeGreaterThan(100);
    expect(r.identical).toBe(r.xbzrle);
    expect(r.simdScalarSame).toBe(r.xbzrle);
    // QEMU's counters (SPEC §4.3): `pages` counts every cache hit, including
    // unchanged pages that send nothing, so it is >= the records; `bytes`
    // is exactly the sum over records of (record size - 8); no overflow here.
    expect(cache['pages']).toBeGreaterThanOrEqual(r.xbzrle);
    expect(r.xbzrleBytes).toBe(cache['bytes']);
    expect(r.normal).toBe(ram['normal']);
  });
});
