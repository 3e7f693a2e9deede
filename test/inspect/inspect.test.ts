import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { ProtocolError, TruncatedError } from '../../src/errors.js';
import { formatInspect } from '../../src/inspect/format.js';
import { inspectStream, type InspectOptions } from '../../src/inspect/inspect.js';
import { RamImage } from '../../src/inspect/ram-image.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { FIXTURE_PAGES, fixtureRam } from '../fixtures/none-1m.pattern.mjs';
import { DEV_VMDESC, PAGE, chunks, pattern, postcopyStream, precopyStream } from './streams.js';
import { vmdescFromCapture } from '../../src/inspect/devices.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function fails(bytes: Uint8Array, opts: InspectOptions = {}): Promise<ProtocolError> {
  const err = await inspectStream(chunks(bytes, 1000), opts).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProtocolError);
  return err as ProtocolError;
}

describe('inspectStream on the QEMU golden capture (test/fixtures/none-1m.bin)', () => {
  const bytes = fs.readFileSync(new URL('../fixtures/none-1m.bin', import.meta.url));

  it('rebuilds the RAM exactly and lists sections, devices and the vmdesc', async () => {
    const r = await inspectStream(chunks(bytes, 777));
    expect(r.configuration).toEqual({ name: 'none' });
    expect(r.ramBlocks).toHaveLength(1);
    expect(r.ramBlocks[0]).toMatchObject({ idstr: 'ram', usedLength: 1 << 20, sha256: sha(fixtureRam()) });
    // The page that is zero but for its last byte is a normal page, not ZERO.
    expect(r.pages).toEqual({ zero: 256 - FIXTURE_PAGES.length - 1, normal: FIXTURE_PAGES.length + 1, xbzrle: 0, compressed: 0 });
    expect(r.sections.map((s) => s.kind)).toEqual(['start', 'part', 'end', 'full', 'full', 'full', 'eof', 'vmdesc']);
    expect(r.devices.map((d) => [d.idstr, d.sectionId, d.size, d.split])).toEqual([
      ['timer', 0, 24, 'vmdesc'],
      ['slirp', 4, 131, 'vmdesc'],
      ['globalstate', 5, 104, 'vmdesc'],
    ]);
    expect(r.eof).toBe(true);
    expect(r.totalBytes).toBe(bytes.length);
    expect(r.warnings).toEqual([]);
  });

  it('gives the same answer for 1-byte chunks and without fields', async () => {
    const a = await inspectStream(chunks(bytes, 1), { fields: false });
    expect(a.ramBlocks[0]!.sha256).toBe(sha(fixtureRam()));
    expect(a.devices[0]!.fields).toBeUndefined();
  });
});

describe('inspectStream on synthetic streams', () => {
  it('applies PAGE, ZERO with fill, COMPRESS_PAGE and XBZRLE (in place) records', async () => {
    const s = precopyStream();
    const r = await inspectStream(chunks(s.bytes, 333));
    expect(r.ramBlocks.map((b) => [b.idstr, b.usedLength, b.sha256])).toEqual([
      ['ram', 16 * PAGE, sha(s.ram)],
      ['rom', 2 * PAGE, sha(s.rom)],
    ]);
    expect(r.pages).toEqual({ zero: 2, normal: 2, xbzrle: 1, compressed: 1 });
    expect(r.ramBlocks[0]!.pages).toEqual({ zero: 1, normal: 1, xbzrle: 1, compressed: 1 });
    expect(r.sections.filter((x) => x.kind === 'part').map((x) => x.pages)).toEqual([
      { zero: 2, normal: 2, xbzrle: 0, compressed: 1 },
      { zero: 0, normal: 0, xbzrle: 1, compressed: 0 },
    ]);
    const dev = r.devices[0]!;
    expect(dev).toMatchObject({ idstr: 'dev', size: 4 + 1 + 8 + 4 + 2, split: 'vmdesc', vmsdName: 'dev' });
    expect(dev.fields![0]!.value).toBe(42);
    expect(dev.subsections![0]).toMatchObject({ name: 'dev/sub', version: 2 });
    expect(dev.subsections![0]!.fields[0]!.value).toBe(0xabcd);
    const text = formatInspect(r, { fields: true });
    expect(text).toContain('count: uint32 = 42');
    expect(text).toContain('subsection dev/sub v2');
    expect(text).toContain(sha(s.ram));
  });

  it('without a vmdesc, splits devices by footer scan and warns like QEMU', async () => {
    const s = precopyStream({ vmdesc: null });
    const r = await inspectStream(chunks(s.bytes));
    expect(r.devices.map((d) => [d.idstr, d.size, d.split])).toEqual([
      ['dev', 19, 'footer-scan'],
      ['globalstate', 104, 'footer-scan'],
    ]);
    expect(r.vmdesc).toBeNull();
    expect(r.warnings.join('\n')).toMatch(/Expected vmdescription section, but got 0/);
  });

  it('rejects a vmdesc that disagrees with the device bytes', async () => {
    const desc = JSON.stringify({ page_size: 4096, devices: [{ name: 'dev', instance_id: 0, vmsd_name: 'dev', version: 1, fields: [{ name: 'count', type: 'uint64', size: 8 }] }] });
    const err = await fails(precopyStream({ vmdesc: desc }).bytes);
    expect(err.message).toMatch(/vmdesc: .*subsection|footer/);
  });

  it('decodes a postcopy stream: commands, the PACKAGED blob, postcopy pages', async () => {
    const s = postcopyStream();
    const r = await inspectStream(chunks(s.bytes, 50));
    expect(r.commands.map((c) => c.name)).toEqual([
      'OPEN_RETURN_PATH', 'PING', 'POSTCOPY_ADVISE', 'POSTCOPY_RAM_DISCARD', 'PACKAGED',
      'POSTCOPY_LISTEN', 'PING', 'POSTCOPY_RUN',
    ]);
    expect(r.commands[1]!.args).toEqual({ value: 1 });
    expect(r.commands[6]).toMatchObject({ args: { value: 3 }, packaged: true });
    expect(r.commands[3]!.args).toEqual({ blockName: 'ram', ranges: [{ start: 0, length: PAGE }] });
    expect(r.packaged).toHaveLength(1);
    expect(r.packaged[0]!.items).toBe(4);
    expect(r.devices).toEqual([
      expect.objectContaining({ idstr: 'dev', size: 19, split: 'footer-scan', packaged: true }),
    ]);
    expect(r.ramBlocks[0]!.sha256).toBe(sha(s.ram));
    expect(r.pages).toEqual({ zero: 2, normal: 3, xbzrle: 0, compressed: 0 });
    expect(r.eof).toBe(true);
    expect(r.vmdesc).toBeNull();
    expect(r.warnings).toEqual([]); // postcopy streams have no vmdesc: not worth a warning
  });

  it('splits packaged devices with a VMDESCRIPTION given from elsewhere (vmdescFromCapture)', async () => {
    const desc = vmdescFromCapture(precopyStream().bytes); // a "precopy capture of the same machine"
    const r = await inspectStream(chunks(postcopyStream().bytes, 64), { vmdesc: desc });
    expect(r.devices).toHaveLength(1);
    expect(r.devices[0]).toMatchObject({ idstr: 'dev', size: 19, split: 'vmdesc', packaged: true });
    expect(r.devices[0]!.fields![0]!.value).toBe(7);
    expect(vmdescFromCapture(Buffer.from(JSON.stringify({ page_size: 4096, devices: [DEV_VMDESC] }))).devices[0]!.name).toBe('dev');
    expect(() => vmdescFromCapture(new Uint8Array(10))).toThrow(/no VMDESCRIPTION/);
  });

  it('refuses XBZRLE after POSTCOPY_LISTEN, as QEMU does', async () => {
    const s = postcopyStream({ afterListen: (w, enc) => enc.xbzrle(w, 'ram', PAGE, Uint8Array.of(0, 1, 9)) });
    const err = await fails(s.bytes);
    expect(err.message).toMatch(/Unknown combination of migration flags: 0x60 \(postcopy mode\)/);
  });

  it('rejects bad RAM records with offsets: unknown block, offset outside the block', async () => {
    const base = precopyStream().bytes;
    const at = Buffer.from(base).indexOf(Buffer.from('\x03rom'), 100);
    const renamed = base.slice();
    renamed[at + 3] = 'x'.charCodeAt(0);
    const e1 = await fails(renamed);
    expect(e1.message).toMatch(/Can't find block rox/);
    expect(e1.offset).toBe(at - 8);
    const s = postcopyStream({ afterListen: (w, enc) => enc.page(w, 'ram', 64 * PAGE, pattern(1)) });
    expect((await fails(s.bytes)).message).toMatch(/Illegal RAM offset 40000/);
  });

  it('rejects streams without EOF, unknown section ids, undecodable live sections', async () => {
    const s = precopyStream().bytes;
    const cut = Buffer.from(s).indexOf(0x04, Buffer.from(s).lastIndexOf(Buffer.from('\x7e\x00\x00\x00\x02')));
    const e = await fails(s.subarray(0, cut));
    expect(e).toBeInstanceOf(TruncatedError);
    expect(e.offset).toBe(cut);
    const w = new ByteWriter();
    w.bytes(s.subarray(0, 17)); // header + configuration "none"
    w.u8(0x02);
    w.be32(9);
    expect((await fails(w.toBytes())).message).toMatch(/Unknown savevm section 9/);
    const v = new ByteWriter();
    v.bytes(s.subarray(0, 17));
    v.u8(0x01);
    v.be32(1);
    v.cstr8('block');
    v.be32(0);
    v.be32(1);
    expect((await fails(v.toBytes())).message).toMatch(/cannot decode live section 'block'/);
  });

  it('enforces its limits instead of allocating', async () => {
    const s = precopyStream().bytes;
    expect((await fails(s, { maxDeviceBytes: 100 })).message).toMatch(/more than 100 bytes of device sections/);
    expect((await fails(s, { maxRamBytes: PAGE })).message).toMatch(/exceeds the inspect limit/);
    expect((await fails(postcopyStream().bytes, { maxPackagedBytes: 10 })).message).toMatch(/package of \d+ bytes exceeds/);
    // A huge RAM layout (1 TiB) is accepted lazily: nothing is allocated for unsent pages.
    const img = new RamImage('big', 2 ** 40);
    img.fill(0, 0);
    img.write(2 ** 39, pattern(1));
    expect(img.allocatedBytes).toBe(64 << 10);
  });

  it('a stream with no device sections: EOF then the VMDESCRIPTION (bounded length)', async () => {
    const s = precopyStream().bytes;
    const endAt = Buffer.from(s).indexOf(0x04, Buffer.from(s).lastIndexOf(Buffer.from('\x7e\x00\x00\x00\x02')));
    const head = s.subarray(0, endAt); // everything up to the first FULL section
    const json = Buffer.from('{"page_size": 4096, "devices": []}');
    const ok = new ByteWriter();
    ok.bytes(head);
    ok.u8(0x00);
    ok.u8(0x06);
    ok.be32(json.length);
    ok.bytes(json);
    const r = await inspectStream(chunks(ok.toBytes(), 7));
    expect(r.devices).toEqual([]);
    expect(r.eof).toBe(true);
    expect(r.vmdesc).toEqual({ offset: endAt + 1, length: 5 + json.length, devices: 0 });
    const big = new ByteWriter();
    big.bytes(head);
    big.u8(0x00);
    big.u8(0x06);
    big.be32(0xffffffff);
    const e = await fails(big.toBytes());
    expect(e.message).toMatch(/VMDESCRIPTION of 4294967295 bytes exceeds the inspect limit/);
    expect(e.offset).toBe(endAt + 2);
  });

  it('a RamImage hashes unsent pages as zeros', () => {
    const img = new RamImage('r', 3 * PAGE);
    img.write(PAGE, pattern(5));
    const expected = new Uint8Array(3 * PAGE);
    expected.set(pattern(5), PAGE);
    expect(img.sha256()).toBe(sha(expected));
    expect(Buffer.from(img.toBuffer()).equals(Buffer.from(expected))).toBe(true);
  });
});
