/**
 * A scripted postcopy source for destination tests: writes wire-encoded
 * items to one end of a duplex pair and decodes the destination's return
 * path (PONG, REQ_PAGES(_ID), RECV_BITMAP + bitmap, RESUME_ACK, SHUT).
 */
import type { Duplex } from 'node:stream';
import { readableChunks } from '../../src/engine/bytes.js';
import { encodeCommand } from '../../src/wire/command.js';
import { SectionType } from '../../src/wire/constants.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import { StreamReader } from '../../src/wire/reader.js';
import { type RpMessage, decodeRecvBitmapData, decodeRpMessage, recvBitmapSize } from '../../src/wire/return-path.js';
import { encodeFooter, encodeSection } from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { MigrationDestination, encodeGlobalState, type DestinationOptions } from '../../src/destination/destination.js';
import { duplexPair, fillRandom } from '../engine/helpers.js';
import { writeHeader, writeRamSetup, writeSectionStart } from './stream-helpers.js';

export const TP = 4096;
export const PAGES = 16;
export const RAM = PAGES * TP;

/** Source-side RAM: deterministic random pages. */
export function sourceRam(seed = 7): Uint8Array {
  const b = new Uint8Array(RAM);
  fillRandom(b, seed);
  return b;
}

/** One channel of the scripted source. */
export class ScriptChannel {
  readonly w = new ByteWriter(4096);
  readonly rp: StreamReader;
  readonly ram = new RamRecordEncoder();
  constructor(
    readonly a: Duplex,
    readonly b: Duplex,
  ) {
    this.rp = new StreamReader(readableChunks(a));
  }
  /** Writes what was encoded so far. */
  send(): void {
    const bytes = this.w.toBytes();
    this.w.reset();
    if (bytes.length > 0) this.a.write(bytes);
  }
  next(): Promise<RpMessage> {
    return this.rp.decode(decodeRpMessage);
  }
  /** Next message that is not a PONG. */
  async nextNonPong(): Promise<RpMessage> {
    for (;;) {
      const m = await this.next();
      if (m.kind !== 'pong') return m;
    }
  }
  bitmap(name: string, length = RAM): Promise<Uint8Array> {
    return this.rp.decode((c) => decodeRecvBitmapData(c, name, recvBitmapSize(length)).slice());
  }
  /** A PART ram section (id 2) holding the given pages of `mem`. */
  part(mem: Uint8Array, pages: readonly number[], end = false): void {
    encodeSection(this.w, end ? { kind: 'end', sectionId: 2 } : { kind: 'part', sectionId: 2 });
    for (const p of pages) this.ram.page(this.w, 'ram', p * TP, mem.subarray(p * TP, (p + 1) * TP));
    this.ram.eos(this.w);
    encodeFooter(this.w, 2);
  }
}

export function channel(): ScriptChannel {
  const [a, b] = duplexPair();
  return new ScriptChannel(a, b);
}

/** Header, OPEN_RETURN_PATH, PING 1, ADVISE(16), RAM setup. */
export function precopyStart(s: ScriptChannel, advise: { summary?: number; tps?: number } = {}): void {
  writeHeader(s.w, 'none');
  encodeCommand(s.w, { kind: 'openReturnPath' });
  encodeCommand(s.w, { kind: 'ping', value: 1 });
  encodeCommand(s.w, { kind: 'postcopyAdvise', ram: { pageSizeSummary: advise.summary ?? TP, targetPageSize: advise.tps ?? TP } });
  writeSectionStart(s.w, SectionType.START, 2, 'ram', 0, 4);
  writeRamSetup(s.w, [{ idstr: 'ram', usedLength: RAM }]);
  encodeFooter(s.w, 2);
}

/** The package QEMU 7.2 sends: LISTEN, FULL globalstate, PING 3, RUN (plus `extra` before PING 3). */
export function packageBlob(extra?: (w: ByteWriter) => void, runState = 'running'): Uint8Array {
  const pkg = new ByteWriter();
  encodeCommand(pkg, { kind: 'postcopyListen' });
  extra?.(pkg);
  writeSectionStart(pkg, SectionType.FULL, 9, 'globalstate', 0, 1);
  pkg.bytes(encodeGlobalState(runState));
  encodeFooter(pkg, 9);
  encodeCommand(pkg, { kind: 'ping', value: 3 });
  encodeCommand(pkg, { kind: 'postcopyRun' });
  return pkg.toBytes();
}

/** Discards, PING 2, PACKAGED, PING 4. */
export function switchover(s: ScriptChannel, discards: { start: number; length: number }[], blob = packageBlob()): void {
  s.ram.reset();
  if (discards.length) encodeCommand(s.w, { kind: 'postcopyRamDiscard', blockName: 'ram', ranges: discards });
  encodeCommand(s.w, { kind: 'ping', value: 2 });
  encodeCommand(s.w, { kind: 'packaged', length: blob.length });
  s.w.bytes(blob);
  encodeCommand(s.w, { kind: 'ping', value: 4 });
}

/** A destination with one 64 KiB block 'ram' and postcopy-ram on. */
export function destination(opts: DestinationOptions = {}): MigrationDestination {
  return new MigrationDestination({
    postcopyRam: true,
    blocks: [{ idstr: 'ram', usedLength: RAM, ramAddr: 0, bytes: new Uint8Array(RAM) }],
    ...opts,
  });
}

/** Resolves when `pred` holds (polled), rejects after `ms`. */
export async function until(pred: () => boolean, ms = 2000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}
