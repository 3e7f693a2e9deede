import { describe, expect, it } from 'vitest';
import { TruncatedError } from '../../src/errors.js';
import {
  checkMachineName,
  decodeFooter,
  decodeHeader,
  decodeSection,
  decodeStreamStart,
  encodeConfiguration,
  encodeFooter,
  encodeHeader,
  encodeSection,
  type Section,
} from '../../src/wire/stream.js';
import { decodeGlobalState, encodeGlobalState } from '../../src/wire/globalstate.js';
import { cur, enc, hex, protoErr } from './helpers.js';

const UUID = hex('12345678 9abcdef0 11223344 55667788');

describe('header and configuration', () => {
  it('golden: -M none header + configuration [captured]', () => {
    const golden = hex('51 45 56 4d 00 00 00 03 07 00 00 00 04 6e 6f 6e 65');
    const bytes = enc((w) => {
      encodeHeader(w);
      encodeConfiguration(w, { machineName: 'none' });
    });
    expect(bytes).toEqual(golden);
    const c = cur(golden);
    expect(decodeStreamStart(c, { final: true })).toEqual({ version: 3, configuration: { machineName: 'none' } });
    expect(c.remaining).toBe(0);
  });

  it('golden: capabilities + uuid subsections [captured]', () => {
    const golden = hex(
      '07 00000004 "none" 05 1a "configuration/capabilities" 00000001 00000001 0f "x-ignore-shared"' +
        ' 05 12 "configuration/uuid" 00000001 12345678 9abcdef0 11223344 55667788',
    );
    const cfg = { machineName: 'none', capabilities: ['x-ignore-shared'], uuid: UUID };
    expect(enc((w) => encodeConfiguration(w, cfg))).toEqual(golden);
    // Followed by a START section: the peek stops at 0x01 and leaves it.
    const got = decodeStreamStart(cur(Uint8Array.from([...hex('5145564d 00000003'), ...golden, 0x01])));
    expect(got.configuration).toEqual(cfg);
  });

  it('round trips target-page-bits', () => {
    const cfg = { machineName: 'virt-7.2', targetPageBits: 14, capabilities: [], uuid: UUID };
    const b = enc((w) => {
      encodeHeader(w);
      encodeConfiguration(w, cfg);
      w.u8(0);
    });
    expect(decodeStreamStart(cur(b)).configuration).toEqual(cfg);
  });

  it('rejects bad magic, v2, other versions, missing configuration, with offsets', () => {
    let e = protoErr(() => decodeHeader(cur(hex('5145564e 00000003'), 100)));
    expect(e.message).toContain('Not a migration stream');
    expect(e.offset).toBe(100);
    e = protoErr(() => decodeHeader(cur(hex('5145564d 00000002'))));
    expect(e.message).toContain("SaveVM v2 format is obsolete and don't work anymore");
    expect(e.offset).toBe(4);
    e = protoErr(() => decodeHeader(cur(hex('5145564d 00000004'))));
    expect(e.message).toContain('Unsupported migration stream version');
    e = protoErr(() => decodeStreamStart(cur(hex('5145564d 00000003 01'))));
    expect(e.message).toContain('Configuration section missing');
    expect(e.offset).toBe(8);
    expect(decodeStreamStart(cur(hex('5145564d 00000003 01')), { expectConfiguration: false })).toEqual({ version: 3 });
  });

  it('rejects unknown configuration subsections and too-new versions, leaves foreign 0x05 alone', () => {
    let e = protoErr(() => decodeStreamStart(cur(hex('5145564d 00000003 07 00000001 "x" 05 10 "configuration/zz" 00000001'))));
    expect(e.message).toContain("unknown subsection 'configuration/zz'");
    expect(e.offset).toBe(14);
    e = protoErr(() =>
      decodeStreamStart(cur(hex('5145564d 00000003 07 00000001 "x" 05 12 "configuration/uuid" 00000002'))),
    );
    expect(e.message).toContain('incoming version_id 2 is too new for local version_id 1');
    expect(e.offset).toBe(34);
    const r = decodeStreamStart(cur(hex('5145564d 00000003 07 00000001 "x" 05 03 "abc"')));
    expect(r.configuration).toEqual({ machineName: 'x' });
  });

  it('machine name check is a prefix compare (QEMU accepted "no" for none)', () => {
    expect(checkMachineName('no', 'none')).toBeNull();
    expect(checkMachineName('none', 'none')).toBeNull();
    expect(checkMachineName('pc', 'none')).toBe("Machine type received is 'pc' and local is 'none'");
    expect(checkMachineName('nonex', 'none')).not.toBeNull();
  });
});

describe('sections', () => {
  const samples: Section[] = [
    { kind: 'eof' },
    { kind: 'start', sectionId: 2, idstr: 'ram', instanceId: 0, versionId: 4 },
    { kind: 'full', sectionId: 19, idstr: '0000:00:02.0/vga', instanceId: 0, versionId: 2 },
    { kind: 'part', sectionId: 2 },
    { kind: 'end', sectionId: 77 },
    { kind: 'command', command: { kind: 'ping', value: 3 } },
    { kind: 'vmdesc', json: '{"page_size": 4096, "devices": []}' },
  ];
  it('round trips every section kind', () => {
    for (const s of samples) {
      const b = enc((w) => encodeSection(w, s));
      const c = cur(b);
      expect(decodeSection(c)).toEqual(s);
      expect(c.remaining).toBe(0);
    }
  });
  it('golden START header of "ram" [captured §11.1]', () => {
    expect(enc((w) => encodeSection(w, samples[1]!))).toEqual(hex('01 00000002 03 "ram" 00000000 00000004'));
  });
  it('rejects unknown types (incl. top-level 0x05 and 0x07) and empty idstr', () => {
    for (const t of [0x05, 0x07, 0x09, 0x7e, 0xff]) {
      const e = protoErr(() => decodeSection(cur(Uint8Array.from([0, 0, t]).subarray(2), 40)));
      expect(e.message).toContain(`Unknown savevm section type ${t}`);
      expect(e.offset).toBe(40);
    }
    const e = protoErr(() => decodeSection(cur(hex('04 00000009 00 00000000 00000001'))));
    expect(e.message).toContain('Unable to read ID string for section 9');
    expect(e.offset).toBe(5);
  });
  it('footers: present, missing, mismatched', () => {
    const b = enc((w) => encodeFooter(w, 5));
    expect(b).toEqual(hex('7e 00000005'));
    decodeFooter(cur(b), 5, 'globalstate');
    let e = protoErr(() => decodeFooter(cur(hex('00 00000005'), 10), 5, 'globalstate'));
    expect(e.message).toContain('Missing section footer for globalstate');
    expect(e.offset).toBe(10);
    e = protoErr(() => decodeFooter(cur(hex('7e 00000006'), 10), 5, 'globalstate'));
    expect(e.message).toContain('Mismatched section id in footer for globalstate - read 0x6 expected 0x5');
    expect(e.offset).toBe(11);
  });
  it('truncated vmdesc throws TruncatedError', () => {
    expect(() => decodeSection(cur(hex('06 00000010 7b')))).toThrow(TruncatedError);
  });
});

describe('globalstate', () => {
  it('golden body for "prelaunch" [captured §11.1]', () => {
    const b = enc((w) => encodeGlobalState(w, 'prelaunch'));
    expect(b.length).toBe(104);
    expect(Array.from(b.subarray(0, 13))).toEqual(Array.from(hex('0000000a "prelaunch"')));
    expect(b.subarray(13).every((x) => x === 0)).toBe(true);
    expect(decodeGlobalState(cur(b))).toBe('prelaunch');
  });
  it('rejects a runstate without NUL', () => {
    const b = new Uint8Array(104).fill(0x61);
    b.set([0, 0, 0, 10]);
    const e = protoErr(() => decodeGlobalState(cur(b, 7)));
    expect(e.message).toContain('not NUL-terminated');
    expect(e.offset).toBe(11);
  });
});
