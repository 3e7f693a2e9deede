/** Builders of small synthetic migration streams for inspect's unit tests. */
import { deflateSync } from 'node:zlib';
import { xbzrleEncode } from '../../src/hotpath/api.js';
import { encodeCommand, type Command } from '../../src/wire/command.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import { encodeConfiguration, encodeFooter, encodeHeader, encodeSection } from '../../src/wire/stream.js';
import { ByteWriter, type WireSink } from '../../src/wire/writer.js';

export const PAGE = 4096;

/** A deterministic page. */
export function pattern(seed: number): Uint8Array {
  const p = new Uint8Array(PAGE);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < PAGE; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    p[i] = x & 0xff;
  }
  return p;
}

/** A device described in the vmdesc: be32 `count`, then subsection dev/sub with a be16. */
export const DEV_VMDESC = {
  name: 'dev', instance_id: 0, vmsd_name: 'dev', version: 1,
  fields: [{ name: 'count', type: 'uint32', size: 4 }],
  subsections: [{ vmsd_name: 'dev/sub', version: 2, fields: [{ name: 'flag', type: 'uint16', size: 2 }] }],
};

export function devPayload(w: WireSink, count: number): void {
  w.be32(count);
  w.u8(0x05);
  w.cstr8('dev/sub');
  w.be32(2);
  w.be16(0xabcd);
}

function full(w: WireSink, id: number, idstr: string, payload: (w: WireSink) => void): void {
  encodeSection(w, { kind: 'full', sectionId: id, idstr, instanceId: 0, versionId: 1 });
  payload(w);
  encodeFooter(w, id);
}

function ramSection(w: WireSink, kind: 'start' | 'part' | 'end', body: (w: WireSink) => void, enc: RamRecordEncoder): void {
  if (kind === 'start') encodeSection(w, { kind, sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4 });
  else encodeSection(w, { kind, sectionId: 2 });
  body(w);
  enc.eos(w);
  encodeFooter(w, 2);
}

/** Expected content of the precopy stream's blocks. */
export interface Built {
  bytes: Uint8Array;
  ram: Uint8Array;
  rom: Uint8Array;
}

/**
 * A precopy stream: blocks "ram" (16 pages) and "rom" (2 pages); PAGE, ZERO
 * (with a non-zero fill), COMPRESS_PAGE and XBZRLE records; device "dev"
 * and "globalstate"; EOF and a VMDESCRIPTION.
 */
export function precopyStream(opts: { vmdesc?: string | null } = {}): Built {
  const w = new ByteWriter(1 << 16);
  const enc = new RamRecordEncoder();
  const ram = new Uint8Array(16 * PAGE);
  const rom = new Uint8Array(2 * PAGE);
  encodeHeader(w);
  encodeConfiguration(w, { machineName: 'none' });
  ramSection(w, 'start', (w) => enc.memSize(w, [{ idstr: 'ram', usedLength: ram.length }, { idstr: 'rom', usedLength: rom.length }]), enc);
  const p0 = pattern(1);
  const p2 = pattern(2);
  const r0 = pattern(3);
  ramSection(w, 'part', (w) => {
    enc.page(w, 'ram', 0, p0);
    enc.zero(w, 'ram', PAGE);
    enc.compressed(w, 'ram', 2 * PAGE, deflateSync(p2));
    enc.page(w, 'rom', 0, r0);
    enc.zero(w, 'rom', PAGE, 0xab);
  }, enc);
  // Second pass: page 0 changed a little, sent as XBZRLE against the first copy.
  const p0b = p0.slice();
  p0b[10] ^= 0xff;
  p0b.fill(7, 2000, 2100);
  const delta = xbzrleEncode(p0, p0b)!;
  ramSection(w, 'part', (w) => enc.xbzrle(w, 'ram', 0, delta), enc);
  ramSection(w, 'end', () => {}, enc);
  full(w, 3, 'dev', (w) => devPayload(w, 42));
  full(w, 4, 'globalstate', (w) => {
    w.be32(8);
    const rs = new Uint8Array(100);
    rs.set(Buffer.from('running'));
    w.bytes(rs);
  });
  w.u8(0x00);
  const json =
    opts.vmdesc !== undefined
      ? opts.vmdesc
      : JSON.stringify({
          page_size: 4096,
          devices: [
            DEV_VMDESC,
            { name: 'globalstate', instance_id: 0, vmsd_name: 'globalstate', version: 1,
              fields: [{ name: 'size', type: 'uint32', size: 4 }, { name: 'runstate', type: 'buffer', size: 100 }] },
          ],
        });
  if (json !== null) {
    const j = Buffer.from(json);
    w.u8(0x06);
    w.be32(j.length);
    w.bytes(j);
  }
  ram.set(p0b, 0);
  ram.set(p2, 2 * PAGE);
  rom.set(r0, 0);
  rom.fill(0xab, PAGE);
  return { bytes: w.toBytes(), ram, rom };
}

/**
 * A postcopy stream as QEMU 7.2 writes it (SPEC §6.2): return path, advise,
 * RAM setup and a precopy pass, discard, PACKAGED (LISTEN, device, PING 3,
 * RUN), postcopy RAM pages, END, EOF, no vmdesc.
 */
export function postcopyStream(opts: { afterListen?: (w: WireSink, enc: RamRecordEncoder) => void } = {}): Built {
  const w = new ByteWriter(1 << 16);
  const enc = new RamRecordEncoder();
  const ram = new Uint8Array(4 * PAGE);
  const cmd = (c: Command, s: WireSink = w) => encodeCommand(s, c);
  encodeHeader(w);
  encodeConfiguration(w, { machineName: 'pc-i440fx-7.2' });
  cmd({ kind: 'openReturnPath' });
  cmd({ kind: 'ping', value: 1 });
  cmd({ kind: 'postcopyAdvise', ram: { pageSizeSummary: 4096, targetPageSize: 4096 } });
  ramSection(w, 'start', (w) => enc.memSize(w, [{ idstr: 'ram', usedLength: ram.length }]), enc);
  ramSection(w, 'part', (w) => {
    enc.page(w, 'ram', 0, pattern(10));
    enc.zero(w, 'ram', PAGE);
  }, enc);
  cmd({ kind: 'postcopyRamDiscard', blockName: 'ram', ranges: [{ start: 0, length: PAGE }] });
  const pkg = new ByteWriter(256);
  cmd({ kind: 'postcopyListen' }, pkg);
  full(pkg, 3, 'dev', (s) => devPayload(s, 7));
  cmd({ kind: 'ping', value: 3 }, pkg);
  cmd({ kind: 'postcopyRun' }, pkg);
  cmd({ kind: 'packaged', length: pkg.length });
  w.bytes(pkg.view());
  enc.reset();
  ramSection(w, 'part', (w) => {
    enc.page(w, 'ram', 0, pattern(11));
    enc.page(w, 'ram', 2 * PAGE, pattern(12));
    opts.afterListen?.(w, enc);
  }, enc);
  ramSection(w, 'end', (w) => enc.zero(w, 'ram', 3 * PAGE), enc);
  w.u8(0x00);
  ram.set(pattern(11), 0);
  ram.set(pattern(12), 2 * PAGE);
  return { bytes: w.toBytes(), ram, rom: new Uint8Array(0) };
}

/** An async iterable yielding `bytes` in chunks of `size` (exercises chunk boundaries). */
export async function* chunks(bytes: Uint8Array, size = 4096): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, Math.min(bytes.length, i + size));
}
