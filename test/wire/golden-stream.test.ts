/**
 * Whole streams through StreamReader: the real QEMU 7.2 captures in
 * fixtures/ (see its README) parsed with every chunking, re-encoded
 * byte-for-byte, and truncation at every offset of a small stream.
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { TruncatedError } from '../../src/errors.js';
import { decodeGlobalState, encodeGlobalState } from '../../src/wire/globalstate.js';
import { type RamRecord, RamRecordDecoder, RamRecordEncoder, encodeRamRecord } from '../../src/wire/ram.js';
import { StreamReader } from '../../src/wire/reader.js';
import {
  type Configuration,
  type Section,
  decodeFooter,
  decodeSection,
  decodeStreamStart,
  encodeConfiguration,
  encodeFooter,
  encodeHeader,
  encodeSection,
} from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';

const fixture = (name: string): Uint8Array =>
  new Uint8Array(gunzipSync(readFileSync(new URL(`./fixtures/${name}`, import.meta.url))));

/** Sizes of device sections we cannot parse generically (SPEC §11.1: timer is 24 bytes). */
const OPAQUE_SIZES: Record<string, number> = { timer: 24 };

interface Item {
  section: Section;
  ram?: RamRecord[];
  body?: Uint8Array;
  runstate?: string;
}

interface Parsed {
  configuration: Configuration | undefined;
  items: Item[];
}

async function parse(r: StreamReader, hasGpa: boolean): Promise<Parsed> {
  const { configuration } = await r.decode((c) => decodeStreamStart(c));
  const ram = new RamRecordDecoder({ setup: { hasGpa } });
  const names = new Map<number, string>();
  const items: Item[] = [];
  for (;;) {
    const section = await r.decode(decodeSection);
    const item: Item = { section };
    items.push(item);
    if (section.kind === 'eof' || section.kind === 'command') continue;
    if (section.kind === 'vmdesc') {
      expect(await r.atEnd()).toBe(true);
      return { configuration, items };
    }
    if (section.kind === 'start' || section.kind === 'full') names.set(section.sectionId, section.idstr);
    const idstr = names.get(section.sectionId);
    if (idstr === undefined) throw new Error(`section ${section.sectionId} without START`);
    if (idstr === 'ram') {
      item.ram = [];
      for (;;) {
        const rec = await r.decode((c) => ram.decode(c));
        item.ram.push(rec);
        if (rec.kind === 'eos') break;
      }
    } else if (idstr === 'globalstate') {
      item.runstate = await r.decode(decodeGlobalState);
    } else {
      item.body = await r.read(OPAQUE_SIZES[idstr]!);
    }
    await r.decode((c) => decodeFooter(c, section.sectionId, idstr));
  }
}

function reencode(p: Parsed): Uint8Array {
  const w = new ByteWriter(1 << 16);
  encodeHeader(w);
  encodeConfiguration(w, p.configuration!);
  const ram = new RamRecordEncoder();
  for (const it of p.items) {
    encodeSection(w, it.section);
    if (it.ram) for (const rec of it.ram) encodeRamRecord(w, ram, rec);
    if (it.runstate !== undefined) encodeGlobalState(w, it.runstate);
    if (it.body) w.bytes(it.body);
    const s = it.section;
    if (s.kind === 'start' || s.kind === 'full' || s.kind === 'part' || s.kind === 'end') encodeFooter(w, s.sectionId);
  }
  return w.toBytes();
}

async function* chunked(data: Uint8Array, size: () => number): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < data.length; ) {
    const n = Math.max(1, size());
    yield data.subarray(o, o + n);
    o += n;
  }
}

describe('real QEMU 7.2 streams', () => {
  const plain = fixture('none-m4.mig.gz');
  const caps = fixture('none-m4-caps.mig.gz');

  it('-M none -m 4M: structure as SPEC §11.1 describes, byte-identical re-encode', async () => {
    const p = await parse(new StreamReader(chunked(plain, () => 65536)), false);
    expect(p.configuration).toEqual({ machineName: 'none' });
    const kinds = p.items.map((i) => `${i.section.kind}${'idstr' in i.section ? ':' + i.section.idstr : ''}`);
    expect(kinds).toEqual(['start:ram', 'part', 'end', 'full:timer', 'full:globalstate', 'eof', 'vmdesc']);
    expect(p.items[0]!.ram).toEqual([
      { kind: 'memSize', total: 0x400000, blocks: [{ idstr: 'ram', usedLength: 0x400000 }] },
      { kind: 'eos' },
    ]);
    const part = p.items[1]!.ram!;
    expect(part.length).toBe(1025); // 1024 ZERO pages + EOS
    expect(part[0]).toEqual({ kind: 'zero', block: 'ram', offset: 0, continued: false, fill: 0 });
    expect(part[1023]).toEqual({ kind: 'zero', block: 'ram', offset: 0x3ff000, continued: true, fill: 0 });
    expect(p.items[2]!.ram).toEqual([{ kind: 'eos' }]);
    expect(p.items[4]!.runstate).toBe('prelaunch');
    const vm = p.items[6]!.section;
    expect(vm.kind === 'vmdesc' && JSON.parse(vm.json).page_size).toBe(4096);
    expect(reencode(p)).toEqual(plain);
  });

  it('x-ignore-shared + validate-uuid: configuration subsections and GPA setup fields', async () => {
    const p = await parse(new StreamReader(chunked(caps, () => 4096)), true);
    expect(p.configuration).toEqual({
      machineName: 'none',
      capabilities: ['x-ignore-shared'],
      uuid: Uint8Array.from([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
    });
    expect(p.items[0]!.ram![0]).toEqual({
      kind: 'memSize',
      total: 0x400000,
      blocks: [{ idstr: 'ram', usedLength: 0x400000, gpa: 0 }],
    });
    expect(reencode(p)).toEqual(caps);
  });

  it('one byte at a time and random chunk sizes give the same records', async () => {
    const whole = await parse(new StreamReader(chunked(caps, () => caps.length)), true);
    const bytewise = await parse(new StreamReader(chunked(caps, () => 1)), true);
    expect(bytewise).toEqual(whole);
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return 1 + (seed % 97);
    };
    for (let i = 0; i < 3; i++) expect(await parse(new StreamReader(chunked(caps, rnd)), true)).toEqual(whole);
  });
});

describe('truncation', () => {
  /** A small stream with every RAM record kind, a command and a device section. */
  function small(): Uint8Array {
    const w = new ByteWriter();
    const ram = new RamRecordEncoder();
    encodeHeader(w);
    encodeConfiguration(w, { machineName: 'pc', capabilities: ['x-ignore-shared'] });
    encodeSection(w, { kind: 'command', command: { kind: 'ping', value: 1 } });
    encodeSection(w, { kind: 'start', sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4 });
    ram.memSize(w, [{ idstr: 'ram', usedLength: 0x2000 }]);
    ram.eos(w);
    encodeFooter(w, 2);
    encodeSection(w, { kind: 'part', sectionId: 2 });
    ram.zero(w, 'ram', 0);
    ram.page(w, 'ram', 0x1000, new Uint8Array(4096).fill(0x5a));
    ram.xbzrle(w, 'ram', 0x1000, Uint8Array.from([0, 1, 0x81]));
    ram.eos(w);
    encodeFooter(w, 2);
    encodeSection(w, { kind: 'full', sectionId: 5, idstr: 'globalstate', instanceId: 0, versionId: 1 });
    encodeGlobalState(w, 'running');
    encodeFooter(w, 5);
    encodeSection(w, { kind: 'eof' });
    encodeSection(w, { kind: 'vmdesc', json: '{}' });
    return w.toBytes();
  }

  it('every proper prefix fails with TruncatedError at or before the cut, never hangs', async () => {
    const full = small();
    const ok = await parse(new StreamReader(chunked(full, () => 7)), false);
    expect(ok.items.map((i) => i.section.kind)).toEqual(['command', 'start', 'part', 'full', 'eof', 'vmdesc']);
    for (let cut = 0; cut < full.length; cut++) {
      const prefix = full.subarray(0, cut);
      let err: unknown;
      try {
        await parse(new StreamReader(chunked(prefix, () => 1000)), false);
      } catch (e) {
        err = e;
      }
      if (!(err instanceof TruncatedError)) throw new Error(`cut ${cut}: ${String(err)}`);
      expect(err.offset).toBeLessThanOrEqual(cut);
    }
  });
});
