import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../src/errors.js';
import {
  findVmdescDevice,
  parseVmdesc,
  splitDeviceState,
  vmdescDescribedSize,
  type VmdescDevice,
} from '../../src/wire/vmdesc.js';

/** Little builder for big-endian payloads. */
class B {
  parts: number[] = [];
  u8(v: number) { this.parts.push(v & 0xff); return this; }
  be16(v: number) { return this.u8(v >> 8).u8(v); }
  be32(v: number) { return this.u8(v >>> 24).u8(v >>> 16).u8(v >>> 8).u8(v); }
  be64(v: bigint) { return this.be32(Number((v >> 32n) & 0xffffffffn)).be32(Number(v & 0xffffffffn)); }
  raw(b: number[]) { this.parts.push(...b); return this; }
  sub(name: string, version: number) {
    this.u8(0x05).u8(name.length);
    for (const ch of name) this.u8(ch.charCodeAt(0));
    return this.be32(version);
  }
  footer(id: number) { return this.u8(0x7e).be32(id); }
  get bytes() { return Uint8Array.from(this.parts); }
}

// The "timer" entry exactly as QEMU 7.2 writes it (SPEC §11.1).
const TIMER = `{"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2, "fields": [{"name": "cpu_ticks_offset", "type": "int64", "size": 8}, {"name": "unused", "type": "unused_buffer", "size": 8}, {"name": "cpu_clock_offset", "type": "int64", "size": 8}]}`;
const SLIRP = `{"name": "slirp", "instance_id": 0, "size": 5, "fields": [{"name": "data", "size": 5, "type": "buffer"}]}`;
// A device with scalars of each width, arrays, a struct array, a tmp field, indexed
// entries, a struct with its own subsection, and nested subsections.
const DEV = {
  name: '0000:00:03.0/dev', instance_id: 0, vmsd_name: 'dev', version: 3,
  fields: [
    { name: 'b', type: 'bool', size: 1 },
    { name: 'i8', type: 'int8', size: 1 },
    { name: 'u16', type: 'uint16', size: 2 },
    { name: 'i32', type: 'int32 equal', size: 4 },
    { name: 'regs', array_len: 3, type: 'uint32', size: 4 },
    { name: 'expiry', type: 'timer', size: 8 },
    { name: 'segs', array_len: 2, type: 'struct', size: 6,
      struct: { vmsd_name: 'seg', version: 1, fields: [{ name: 'sel', type: 'uint16', size: 2 }, { name: 'base', type: 'uint32', size: 4 }] } },
    { name: 'tmp', type: 'tmp', vmsd_name: 'dev_tmp', version: 0, size: 3,
      fields: [{ name: 'a', type: 'uint8', size: 1 }, { name: 'b', type: 'uint16', size: 2 }] },
    { name: 'q', index: 0, type: 'uint8', size: 1 },
    { name: 'q', index: 1, type: 'uint8', size: 1 },
    // A struct whose own subsection is inside its size (QEMU counts those bytes there).
    { name: 'drive', type: 'struct', size: 1 + (1 + 1 + 9 + 4) + 2,
      struct: { vmsd_name: 'drv', version: 1, fields: [{ name: 'media', type: 'uint8', size: 1 }],
        subsections: [{ vmsd_name: 'drv/extra', version: 1, fields: [{ name: 'x', type: 'uint16', size: 2 }] }] } },
    { name: 'conf', type: 'pci config', size: 4 },
  ],
  subsections: [
    { vmsd_name: 'dev/one', version: 2, fields: [{ name: 'big', type: 'uint64', size: 8 }],
      subsections: [{ vmsd_name: 'dev/one/deep', version: 1, fields: [{ name: 'z', type: 'int16', size: 2 }] }] },
    { vmsd_name: 'dev/two', version: 1, fields: [{ name: 'buf', type: 'buffer', size: 100 }] },
  ],
};

function devBytes(): B {
  const b = new B();
  b.u8(1).u8(0xfe).be16(0xbeef).be32(0xfffffffe);
  b.be32(1).be32(2).be32(0xffffffff);
  b.be64(0xffffffffffffffffn);
  b.be16(0x10).be32(0x1000).be16(0x18).be32(0x2000);
  b.u8(7).be16(0x102);
  b.u8(9).u8(10);
  b.u8(0x33).sub('drv/extra', 1).be16(0x4444);
  b.raw([1, 2, 3, 4]);
  b.sub('dev/one', 2).be64(0x123456789abcdefn).sub('dev/one/deep', 1).be16(0xfffd);
  b.sub('dev/two', 1).raw(new Array(100).fill(0xaa));
  return b;
}

const descJson = () => `{"page_size": 4096, "devices": [${TIMER}, ${SLIRP}, ${JSON.stringify(DEV)}]}`;

describe('vmdesc', () => {
  it('parses the JSON and finds devices by (idstr, instance)', () => {
    const d = parseVmdesc(descJson());
    expect(d.page_size).toBe(4096);
    expect(d.devices.map((x) => x.name)).toEqual(['timer', 'slirp', '0000:00:03.0/dev']);
    expect(findVmdescDevice(d, 'timer', 0)?.version).toBe(2);
    expect(findVmdescDevice(d, 'timer', 1)).toBeUndefined();
    // 1+1+2+4+12+8+12+3+1+1+18+4 fields, 8+2 and 100 in subsections.
    expect(vmdescDescribedSize(findVmdescDevice(d, '0000:00:03.0/dev', 0)!)).toBe(67 + 10 + 100);
  });

  it('splits the timer section into be64 values, checking the footer', () => {
    const dev = parseVmdesc(descJson()).devices[0]!;
    const b = new B().be64(0x1122334455n).raw([0, 0, 0, 0, 0, 0, 0, 0]).be64(0xfffffffffffffff0n).footer(0);
    const r = splitDeviceState(dev, b.bytes, { base: 1000, footerSectionId: 0 });
    expect(r.consumed).toBe(24);
    expect(r.fields.map((f) => [f.name, f.offset, f.size, f.value ?? f.hex])).toEqual([
      ['cpu_ticks_offset', 1000, 8, 0x1122334455],
      ['unused', 1008, 8, '0000000000000000'],
      ['cpu_clock_offset', 1016, 8, -16],
    ]);
  });

  it('splits an old-style device (size + one data buffer)', () => {
    const dev = parseVmdesc(descJson()).devices[1]!;
    const r = splitDeviceState(dev, Uint8Array.from([1, 2, 3, 4, 5]));
    expect(r.consumed).toBe(5);
    expect(r.fields[0]).toMatchObject({ name: 'data', type: 'buffer', size: 5, hex: '0102030405' });
  });

  it('decodes scalars, arrays, structs, tmp, indexed fields and nested subsections', () => {
    const dev = findVmdescDevice(parseVmdesc(descJson()), '0000:00:03.0/dev', 0)!;
    const bytes = devBytes().footer(31).bytes;
    const r = splitDeviceState(dev, bytes, { footerSectionId: 31 });
    expect(r.consumed).toBe(bytes.length - 5);
    const f = Object.fromEntries(r.fields.map((x) => [`${x.name}${x.index ?? ''}`, x]));
    expect(f['b']!.value).toBe(true);
    expect(f['i8']!.value).toBe(-2);
    expect(f['u16']!.value).toBe(0xbeef);
    expect(f['i32']!.value).toBe(-2);
    expect(f['regs']).toMatchObject({ arrayLen: 3, size: 12, values: [1, 2, 0xffffffff] });
    expect(f['expiry']!.value).toBe(-1); // all-ones timer = not armed
    expect(f['segs']!.elements!.map((e) => e.fields.map((x) => x.value))).toEqual([[0x10, 0x1000], [0x18, 0x2000]]);
    expect(f['tmp']!.elements![0]!.fields.map((x) => x.value)).toEqual([7, 0x102]);
    expect([f['q0']!.value, f['q1']!.value]).toEqual([9, 10]);
    const drive = f['drive']!.elements![0]!;
    expect(drive.fields[0]!.value).toBe(0x33);
    expect(drive.subsections[0]).toMatchObject({ name: 'drv/extra', version: 1 });
    expect(drive.subsections[0]!.fields[0]!.value).toBe(0x4444);
    expect(f['conf']!.hex).toBe('01020304');
    expect(r.subsections.map((s) => s.name)).toEqual(['dev/one', 'dev/two']);
    expect(r.subsections[0]!.fields[0]!.value).toBe('81985529216486895'); // > 2^53: decimal string
    expect(r.subsections[0]!.subsections[0]!.fields[0]!.value).toBe(-3);
    expect(r.subsections[1]!.fields[0]!.size).toBe(100);
    expect(r.subsections[1]!.fields[0]!.hex).toBeUndefined(); // too long for hex
    // Subsection offsets point at their 0x05 header byte.
    expect(bytes[r.subsections[1]!.offset]).toBe(0x05);
  });

  it('shows NUL-padded ASCII buffers as text (globalstate runstate)', () => {
    const dev: VmdescDevice = { name: 'globalstate', instance_id: 0, vmsd_name: 'globalstate', version: 1,
      fields: [{ name: 'size', type: 'uint32', size: 4 }, { name: 'runstate', type: 'buffer', size: 100 }, { name: 'junk', type: 'buffer', size: 4 }] };
    const rs = new Array(100).fill(0);
    Buffer.from('prelaunch').forEach((ch, i) => (rs[i] = ch));
    const r = splitDeviceState(dev, new B().be32(10).raw(rs).raw([0x41, 0, 0x42, 0]).bytes);
    expect(r.fields[1]).toMatchObject({ name: 'runstate', size: 100, text: 'prelaunch' });
    expect(r.fields[2]!.text).toBeUndefined(); // a NUL inside: not text
    expect(r.fields[2]!.hex).toBe('41004200');
  });

  it('reports 64-bit values beyond 2^53 as decimal strings', () => {
    const dev: VmdescDevice = { name: 'x', instance_id: 0, vmsd_name: 'x', version: 1, fields: [{ name: 'v', type: 'uint64', size: 8 }] };
    const r = splitDeviceState(dev, new B().be64(0xfedcba9876543210n).bytes);
    expect(r.fields[0]!.value).toBe('18364758544493064720');
  });

  const dev = () => findVmdescDevice(parseVmdesc(descJson()), '0000:00:03.0/dev', 0)!;
  const expectErr = (fn: () => unknown, re: RegExp, offset?: number) => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).message).toMatch(re);
    if (offset !== undefined) expect((err as ProtocolError).offset).toBe(offset);
  };

  it('rejects bytes that disagree with the description, with offsets', () => {
    const good = devBytes().bytes;
    // Truncated in the middle of the last subsection.
    expectErr(() => splitDeviceState(dev(), good.subarray(0, good.length - 10)), /shorter than its description/);
    // Extra bytes (no footer expected).
    expectErr(() => splitDeviceState(dev(), Uint8Array.from([...good, 0])), /1 byte\(s\) left over/, good.length);
    // Wrong footer id / no footer.
    expectErr(() => splitDeviceState(dev(), Uint8Array.from([...good, 0x7e, 0, 0, 0, 9]), { footerSectionId: 8 }), /section id 9, expected 8/, good.length);
    expectErr(() => splitDeviceState(dev(), Uint8Array.from([...good, 0x00, 0, 0, 0, 8]), { footerSectionId: 8 }), /no section footer/, good.length);
    // A subsection header with a different name / version.
    const at = good.indexOf(0x05, 67);
    const renamed = good.slice();
    renamed[at + 2 + 5] = 'X'.charCodeAt(0); // dev/oXe
    expectErr(() => splitDeviceState(dev(), renamed, { base: 100 }), /subsection 'dev\/oXe' where the description has 'dev\/one'/, 100 + at + 1);
    const reversioned = good.slice();
    reversioned[at + 1 + 1 + 7 + 3] = 3;
    expectErr(() => splitDeviceState(dev(), reversioned), /version 3, described as 2/, at + 9);
    const nosub = good.slice();
    nosub[at] = 0x04;
    expectErr(() => splitDeviceState(dev(), nosub), /expected subsection 'dev\/one' \(0x05\), got 0x04/, at);
  });

  it('rejects a struct whose parts do not add up to its size', () => {
    const d = structuredClone(DEV) as unknown as VmdescDevice;
    d.fields[10]!.size = 20; // drive described as 20 bytes, parts take 18
    d.subsections = [];
    expectErr(() => splitDeviceState(d, devBytes().bytes.subarray(0, 67 + 2 + 10)), /'drive': described as 20 bytes but its parts take 18/);
  });

  it('rejects malformed JSON and malformed shapes with the vmdesc offset', () => {
    expectErr(() => parseVmdesc('{"page_size": 4096, "devi', 77), /invalid JSON/, 77);
    expectErr(() => parseVmdesc('[]', 5), /no "devices"/, 5);
    expectErr(() => parseVmdesc('{"page_size": 4096, "devices": [{"name": "a"}]}'), /device without name\/instance_id/);
    expectErr(() => parseVmdesc('{"page_size": 4096, "devices": [{"name": "a", "instance_id": 0, "fields": [{"name": "f", "type": "uint8", "size": -1}]}]}'), /field without/);
    expectErr(() => parseVmdesc('{"page_size": 4096, "devices": [{"name": "a", "instance_id": 0, "fields": [], "subsections": [{"version": 1}]}]}'), /without vmsd_name/);
    // Deep nesting is refused instead of recursing without bound.
    let s: unknown = { vmsd_name: 'x', version: 1, fields: [] };
    for (let i = 0; i < 100; i++) s = { vmsd_name: 'x', version: 1, fields: [{ name: 'f', type: 'struct', size: 1, struct: s }] };
    expectErr(() => parseVmdesc(JSON.stringify({ page_size: 4096, devices: [{ name: 'a', instance_id: 0, fields: (s as { fields: unknown[] }).fields }] })), /nested too deeply/);
  });
});
