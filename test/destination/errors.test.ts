/**
 * Every destination error path, with QEMU's message, from hand-built streams.
 */
import { describe, expect, it } from 'vitest';
import { ByteWriter } from '../../src/wire/writer.js';
import {
  writeCommand,
  writeFooter,
  writeHeader,
  writePageHeader,
  writePing,
  writeRamSetup,
  writeSectionPart,
  writeSectionStart,
} from './stream-helpers.js';
import { MigCmd, RamFlag, SectionType } from '../../src/wire/constants.js';
import { MigrationDestination, encodeGlobalState } from '../../src/destination/destination.js';
import { duplexPair } from '../engine/helpers.js';

const RAM = 64 * 1024;
type W = ByteWriter;

function block(): { idstr: string; usedLength: number; ramAddr: number; bytes: Uint8Array } {
  return { idstr: 'ram', usedLength: RAM, ramAddr: 0, bytes: new Uint8Array(RAM) };
}

/** header + START ram (setup), then `body`, as bytes. */
function stream(body: (w: W) => void, opts: { name?: string; setup?: boolean } = {}): Uint8Array {
  const w = new ByteWriter(1024);
  writeHeader(w, opts.name ?? 'none');
  if (opts.setup ?? true) {
    writeSectionStart(w, SectionType.START, 2, 'ram', 0, 4);
    writeRamSetup(w, [{ idstr: 'ram', usedLength: RAM }]);
    writeFooter(w, 2);
  }
  body(w);
  return w.toBytes();
}

/** PART with the given records, EOS, footer. */
function part(w: W, records: (w: W) => void, id = 2): void {
  writeSectionPart(w, SectionType.PART, id);
  records(w);
  w.be64(RamFlag.EOS);
  writeFooter(w, id);
}

async function run(bytes: Uint8Array, opts: ConstructorParameters<typeof MigrationDestination>[0] = {}) {
  const dst = new MigrationDestination({ blocks: [block()], ...opts });
  const [a, b] = duplexPair();
  const back: Uint8Array[] = [];
  a.on('data', (c: Uint8Array) => back.push(c));
  const p = dst.load(b);
  a.end(bytes);
  const status = await p;
  return { dst, status, desc: dst.queryMigrate()['error-desc'], back: Buffer.concat(back) };
}

const eof = (w: W): void => w.u8(SectionType.EOF);

/** header + configuration with one subsection (name, version, fields written by `sub`), then EOF. */
function withConfigSub(sub: (w: W) => void): Uint8Array {
  const w = new ByteWriter();
  writeHeader(w, 'none');
  w.u8(SectionType.SUBSECTION);
  sub(w);
  w.u8(SectionType.EOF);
  return w.toBytes();
}

describe('destination error paths (QEMU wording)', () => {
  it('accepts a minimal well-formed stream (control)', async () => {
    const r = await run(stream((w) => (part(w, (w) => (writePageHeader(w, 0, RamFlag.ZERO, 'ram'), w.u8(0xab))), eof(w))));
    expect(r.status).toBe('completed');
    expect(r.dst.blocks[0]!.bytes[4095]).toBe(0xab);
    expect(r.dst.warnings).toContain('Expected vmdescription section, but got 0');
    expect(r.dst.received.get('ram')![0]).toBe(1);
  });

  const cases: [string, Uint8Array, string, ConstructorParameters<typeof MigrationDestination>[0]?][] = [
    ['bad magic', Uint8Array.of(1, 2, 3, 4, 0, 0, 0, 3), 'Not a migration stream'],
    ['version 2', Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2), "SaveVM v2 format is obsolete and don't work anymore"],
    ['version 4', Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 4), 'Unsupported migration stream version'],
    ['no configuration', Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3, 0), 'Configuration section missing'],
    ['machine type', stream(eof, { name: 'pc-i440fx-7.2', setup: false }), "Machine type received is 'pc-i440fx-7.2' and local is 'none'"],
    [
      'unknown ramblock',
      (() => {
        const w = new ByteWriter();
        writeHeader(w, 'none');
        writeSectionStart(w, SectionType.START, 2, 'ram', 0, 4);
        writeRamSetup(w, [{ idstr: 'pc.ram', usedLength: RAM }]);
        return w.toBytes();
      })(),
      'Unknown ramblock "pc.ram", cannot accept migration',
    ],
    [
      'size mismatch',
      (() => {
        const w = new ByteWriter();
        writeHeader(w, 'none');
        writeSectionStart(w, SectionType.START, 2, 'ram', 0, 4);
        writeRamSetup(w, [{ idstr: 'ram', usedLength: 2 * RAM }]);
        return w.toBytes();
      })(),
      'Size mismatch: ram: 0x20000 != 0x10000: Invalid argument',
    ],
    ['illegal offset', stream((w) => part(w, (w) => (writePageHeader(w, RAM, RamFlag.ZERO, 'ram'), w.u8(0)))), 'Illegal RAM offset 10000'],
    ['CONTINUE first', stream((w) => part(w, (w) => (writePageHeader(w, 0, RamFlag.ZERO, undefined), w.u8(0)))), 'Ack, bad migration stream!'],
    ['unknown block in record', stream((w) => part(w, (w) => (writePageHeader(w, 0, RamFlag.ZERO, 'nope'), w.u8(0)))), "Can't find block nope"],
    ['flag combination', stream((w) => part(w, (w) => w.be64(0x0a))), 'Unknown combination of migration flags: 0xa'],
    ['compressed page', stream((w) => part(w, (w) => writePageHeader(w, 0, RamFlag.COMPRESS_PAGE, 'ram'))), 'Received an unexpected compressed page'],
    [
      'xbzrle flag',
      stream((w) => part(w, (w) => (writePageHeader(w, 0, RamFlag.XBZRLE, 'ram'), w.u8(2), w.be16(3), w.bytes(Uint8Array.of(0, 1, 5))))),
      'Failed to load XBZRLE page - wrong compression!',
    ],
    [
      'xbzrle len',
      stream((w) => part(w, (w) => (writePageHeader(w, 0, RamFlag.XBZRLE, 'ram'), w.u8(1), w.be16(4097)))),
      'Failed to load XBZRLE page - len overflow!',
    ],
    [
      'xbzrle decode',
      stream((w) => part(w, (w) => (writePageHeader(w, 0, RamFlag.XBZRLE, 'ram'), w.u8(1), w.be16(3), w.bytes(Uint8Array.of(0, 0, 5))))),
      'Failed to load XBZRLE page - decode error!',
    ],
    ['missing footer', stream((w) => (writeSectionPart(w, SectionType.PART, 2), w.be64(RamFlag.EOS), w.u8(0))), 'Missing section footer for ram'],
    [
      'mismatched footer',
      stream((w) => (writeSectionPart(w, SectionType.PART, 2), w.be64(RamFlag.EOS), writeFooter(w, 3))),
      'Mismatched section id in footer for ram - read 0x3 expected 0x2',
    ],
    ['unknown PART id', stream((w) => part(w, () => undefined, 9)), 'Unknown savevm section 9'],
    [
      'unknown section',
      stream((w) => (writeSectionStart(w, SectionType.FULL, 3, 'timer', 0, 2), w.bytes(new Uint8Array(24)), writeFooter(w, 3))),
      "Unknown savevm section or instance 'timer' 0. Make sure that your current VM setup matches your saved VM setup, including any hotplugged devices",
    ],
    ['section type', stream((w) => w.u8(0x42)), 'Unknown savevm section type 66'],
    ['ram version', stream((w) => writeSectionStart(w, SectionType.START, 5, 'ram', 0, 5), { setup: false }), "savevm: unsupported version 5 for 'ram' v4"],
    ['MIG_CMD 0', stream((w) => writeCommand(w, 0)), 'MIG_CMD 0x0 unknown (len 0x0)'],
    ['MIG_CMD 11', stream((w) => writeCommand(w, 11)), 'MIG_CMD 0xb unknown (len 0x0)'],
    ['OPEN_RETURN_PATH len', stream((w) => writeCommand(w, MigCmd.OPEN_RETURN_PATH, new Uint8Array(3))), 'OPEN_RETURN_PATH received bad length: 3 should be 0'],
    ['PING without RP', stream((w) => writePing(w, 1)), 'CMD_PING received with no return path'],
    ['16-byte advise', stream((w) => writeCommand(w, MigCmd.POSTCOPY_ADVISE, new Uint8Array(16))), 'RAM postcopy is disabled but have 16 byte advise'],
    ['0-byte advise', stream((w) => writeCommand(w, MigCmd.POSTCOPY_ADVISE)), 'RAM postcopy is enabled but have 0 byte advise', { postcopyRam: true }],
    ['unknown capability', withConfigSub((w) => (w.cstr8('configuration/capabilities'), w.be32(1), w.be32(1), w.cstr8('x-foo'))), 'Received unknown capability x-foo'],
    [
      'x-ignore-shared on the source',
      withConfigSub((w) => (w.cstr8('configuration/capabilities'), w.be32(1), w.be32(1), w.cstr8('x-ignore-shared'))),
      'Capability x-ignore-shared is off, but received capability is on',
    ],
    ['target page bits', withConfigSub((w) => (w.cstr8('configuration/target-page-bits'), w.be32(1), w.be32(13))), 'Received TARGET_PAGE_BITS is 13 but local is 12'],
    ['truncated', stream((w) => (writeSectionPart(w, SectionType.PART, 2), w.be32(0))), 'ram record: stream ended, 4 more byte(s) needed'],
  ];
  for (const [name, bytes, message, opts] of cases) {
    it(`fails: ${name}`, async () => {
      const r = await run(bytes, opts);
      expect(r.status).toBe('failed');
      expect(r.desc).toBe(message);
    });
  }

  it('answers PING on the return path and sends SHUT(0) / SHUT(1)', async () => {
    const ok = await run(stream((w) => (writeCommand(w, MigCmd.OPEN_RETURN_PATH), writePing(w, 7), eof(w))));
    expect(ok.status).toBe('completed');
    expect([...ok.back]).toEqual([0, 2, 0, 4, 0, 0, 0, 7, 0, 1, 0, 4, 0, 0, 0, 0]);
    const bad = await run(stream((w) => (writeCommand(w, MigCmd.OPEN_RETURN_PATH), w.u8(0x42))));
    expect(bad.status).toBe('failed');
    expect([...bad.back]).toEqual([0, 1, 0, 4, 0, 0, 0, 1]);
  });

  it('accepts a configuration/uuid subsection with a warning (no local -uuid)', async () => {
    const r = await run(withConfigSub((w) => (w.cstr8('configuration/uuid'), w.be32(1), w.bytes(new Uint8Array(16).fill(7)))));
    expect(r.status).toBe('completed');
    expect(r.dst.warnings[0]).toMatch(/UUID/);
  });

  it('accepts a 0-byte advise without postcopy-ram and a name prefix (QEMU strncmp)', async () => {
    const r = await run(stream((w) => (writeCommand(w, MigCmd.POSTCOPY_ADVISE), eof(w)), { name: 'no' }));
    expect(r.status).toBe('completed');
  });

  it('applies ZERO fill, PAGE and XBZRLE in place; run state from globalstate or autostart', async () => {
    const page = new Uint8Array(4096).fill(3);
    const bytes = stream((w) => {
      part(w, (w) => {
        writePageHeader(w, 4096, RamFlag.PAGE, 'ram');
        w.bytes(page);
        writePageHeader(w, 4096, RamFlag.XBZRLE, undefined);
        w.u8(1);
        w.be16(5);
        w.bytes(Uint8Array.of(10, 2, 0x77, 0x78, 0x79).subarray(0, 5));
      });
      writeSectionStart(w, SectionType.FULL, 3, 'globalstate', 0, 1);
      w.bytes(encodeGlobalState('prelaunch'));
      writeFooter(w, 3);
      eof(w);
    });
    // the XBZRLE delta "skip 10, change 2: 77 78" has one trailing byte too many → decode error
    const bad = await run(bytes);
    expect(bad.desc).toBe('Failed to load XBZRLE page - decode error!');
    const fixed = stream((w) => {
      part(w, (w) => {
        writePageHeader(w, 4096, RamFlag.PAGE, 'ram');
        w.bytes(page);
        writePageHeader(w, 4096, RamFlag.XBZRLE, undefined);
        w.u8(1);
        w.be16(4);
        w.bytes(Uint8Array.of(10, 2, 0x77, 0x78));
      });
      writeSectionStart(w, SectionType.FULL, 3, 'globalstate', 0, 1);
      w.bytes(encodeGlobalState('prelaunch'));
      writeFooter(w, 3);
      eof(w);
    });
    const r = await run(fixed);
    expect(r.status).toBe('completed');
    const m = r.dst.blocks[0]!.bytes.subarray(4096, 8192);
    expect([m[9], m[10], m[11], m[12]]).toEqual([3, 0x77, 0x78, 3]);
    expect(r.dst.runState).toBe('prelaunch');
    const noGs = await run(stream(eof), { autostart: false });
    expect(noGs.dst.runState).toBe('paused');
    const auto = await run(stream(eof));
    expect(auto.dst.runState).toBe('running');
  });
});
