/**
 * A scripted postcopy destination for source tests, built only from the wire
 * decoders: parses the main stream (header, commands, PACKAGED with a
 * sub-reader, RAM records), answers PINGs, applies discards, keeps RAM and a
 * received bitmap, logs every page with its phase, answers the recovery
 * handshake (RECV_BITMAP + bitmap, POSTCOPY_RESUME → RESUME_ACK) and sends
 * SHUT 0 at EOF. Hooks let a test send page requests or misbehave.
 */
import type { Duplex } from 'node:stream';
import { ByteWriter } from '../../src/wire/writer.js';
import { StreamReader } from '../../src/wire/reader.js';
import { readableChunks } from '../../src/engine/bytes.js';
import { jsPageOps } from '../../src/engine/page-ops-js.js';
import { RamRecordDecoder } from '../../src/wire/ram.js';
import { decodeFooter, decodeSection, decodeStreamStart } from '../../src/wire/stream.js';
import { encodeRecvBitmapData, encodeRpMessage, recvBitmapSize, type RpMessage } from '../../src/wire/return-path.js';

const TP = 4096;

/** One page as it arrived. */
export interface PageLog {
  block: string;
  page: number;
  /** Arrived after LISTEN. */
  postcopy: boolean;
  /** Which channel (0 = the first). */
  channel: number;
  at: number;
}

/** What happens on a channel; return 'stop' from a hook to stop reading there. */
export interface DestHooks {
  onListen?(d: ScriptedDestination): void;
  onPage?(d: ScriptedDestination, p: PageLog): void | 'stop';
  /** Recovery: called per RECV_BITMAP; return 'stop' to break the handshake. */
  onRecvBitmap?(d: ScriptedDestination, name: string): void | 'stop';
  /** Recovery: the RESUME_ACK value to send (default 1); 'none' sends nothing. */
  resumeAck?(d: ScriptedDestination): number | 'none';
  /** Recovery: after RESUME_ACK was sent (re-send requests here). */
  afterResume?(d: ScriptedDestination): void;
  /** Answer PINGs (default true). */
  answerPings?(d: ScriptedDestination, value: number): boolean;
}

/** One RAM block of the scripted destination. */
export interface DestBlock {
  readonly idstr: string;
  readonly ram: Uint8Array;
  readonly received: Uint8Array;
  /** Pages named by POSTCOPY_RAM_DISCARD ranges. */
  readonly discarded: Set<number>;
}

/** The scripted destination: one block "ram" of `size` bytes, or the given blocks. */
export class ScriptedDestination {
  readonly blocks = new Map<string, DestBlock>();
  readonly pages: PageLog[] = [];
  readonly items: string[] = [];
  readonly pings: number[] = [];
  /** `block@page` of pages that arrived after LISTEN although already received (must stay empty). */
  readonly duplicates: string[] = [];
  listening = false;
  /** XBZRLE records applied (precopy only; the postcopy decoder refuses them). */
  xbzrlePages = 0;
  channelNo = -1;
  private ch: Duplex | undefined;
  private trigger: { n: number; fn: () => void } | undefined;
  private readonly names = new Map<number, string>();
  private readonly first: DestBlock;

  constructor(
    layout: number | { idstr: string; size: number }[],
    readonly hooks: DestHooks = {},
  ) {
    const list = typeof layout === 'number' ? [{ idstr: 'ram', size: layout }] : layout;
    for (const b of list) {
      this.blocks.set(b.idstr, { idstr: b.idstr, ram: new Uint8Array(b.size), received: new Uint8Array(b.size / TP), discarded: new Set() });
    }
    this.first = this.blocks.get(list[0]!.idstr)!;
  }

  /** The first block's memory. */
  get ram(): Uint8Array {
    return this.first.ram;
  }

  /** The first block's received flags, one per page. */
  get received(): Uint8Array {
    return this.first.received;
  }

  /** The first block's discarded pages. */
  get discarded(): Set<number> {
    return this.first.discarded;
  }

  private block(idstr: string): DestBlock {
    const b = this.blocks.get(idstr);
    if (!b) throw new Error(`unknown block ${idstr}`);
    return b;
  }

  /** Sends one return-path message on the current channel. */
  send(m: RpMessage): void {
    const w = new ByteWriter(64);
    encodeRpMessage(w, m);
    this.ch?.write(w.toBytes());
  }

  /** Calls `fn` once when `n` pages have arrived before LISTEN (e.g. to start postcopy mid-precopy). */
  afterPrecopyPages(n: number, fn: () => void): void {
    this.trigger = { n, fn };
  }

  /** Pages of block `idstr` (default: the first) not received yet. */
  missing(idstr = this.first.idstr): number[] {
    const out: number[] = [];
    this.block(idstr).received.forEach((r, p) => r || out.push(p));
    return out;
  }

  /**
   * Serves one channel until EOF ('eof', SHUT 0 sent), a hook said stop
   * ('stopped'), or the channel broke ('closed'). `recovery`: no header.
   */
  async serve(ch: Duplex, recovery = false, hooks: DestHooks = this.hooks): Promise<'eof' | 'stopped' | 'closed'> {
    this.ch = ch;
    this.channelNo++;
    ch.on('error', () => undefined);
    const r = new StreamReader(readableChunks(ch));
    const ram = new RamRecordDecoder({ postcopy: recovery });
    try {
      if (!recovery) await r.decode((c) => decodeStreamStart(c));
      const end = await this.items_(r, ram, hooks, '');
      if (end === 'eof') this.send({ kind: 'shut', value: 0 });
      return end === 'run' ? 'closed' : end;
    } catch {
      return 'closed';
    }
  }

  private async items_(r: StreamReader, ram: RamRecordDecoder, hooks: DestHooks, prefix: string): Promise<'eof' | 'run' | 'stopped'> {
    for (;;) {
      const s = await r.decode(decodeSection);
      if (s.kind === 'eof') {
        this.items.push(prefix + 'eof');
        return 'eof';
      }
      if (s.kind === 'vmdesc') throw new Error('vmdesc in postcopy');
      if (s.kind === 'command') {
        const c = s.command;
        this.items.push(prefix + c.kind + (c.kind === 'ping' ? ` ${c.value}` : ''));
        switch (c.kind) {
          case 'ping':
            this.pings.push(c.value);
            if (hooks.answerPings?.(this, c.value) ?? true) this.send({ kind: 'pong', value: c.value });
            break;
          case 'postcopyRamDiscard':
            for (const rg of c.ranges) {
              const blk = this.block(c.blockName);
              blk.received.fill(0, rg.start / TP, (rg.start + rg.length) / TP);
              for (let p = rg.start / TP; p < (rg.start + rg.length) / TP; p++) blk.discarded.add(p);
              blk.ram.fill(0, rg.start, rg.start + rg.length);
            }
            break;
          case 'packaged': {
            const sub = r.subReader(c.length);
            const end = await this.items_(sub, ram, hooks, 'pkg:');
            if (end !== 'run') throw new Error('package without RUN');
            await sub.discardRest();
            ram.postcopy = true;
            break;
          }
          case 'postcopyListen':
            this.listening = true;
            hooks.onListen?.(this);
            break;
          case 'postcopyRun':
            return 'run';
          case 'recvBitmap': {
            if (hooks.onRecvBitmap?.(this, c.blockName) === 'stop') return 'stopped';
            this.send({ kind: 'recvBitmap', blockName: c.blockName });
            const blk = this.block(c.blockName);
            const bits = new Uint8Array(recvBitmapSize(blk.ram.length));
            blk.received.forEach((v, p) => v && (bits[p >>> 3]! |= 1 << (p & 7)));
            const w = new ByteWriter(bits.length + 32);
            encodeRecvBitmapData(w, bits);
            this.ch!.write(w.toBytes());
            break;
          }
          case 'postcopyResume': {
            const v = hooks.resumeAck?.(this) ?? 1;
            if (v !== 'none') this.send({ kind: 'resumeAck', value: v });
            hooks.afterResume?.(this);
            break;
          }
          default:
        }
        continue;
      }
      if (s.kind === 'start' || s.kind === 'full') this.names.set(s.sectionId, s.idstr);
      const idstr = this.names.get(s.sectionId)!;
      this.items.push(`${prefix}${s.kind}:${idstr}`);
      if (idstr !== 'ram') throw new Error(`unexpected section ${idstr}`);
      for (;;) {
        const rec = await r.decode((c) => ram.decode(c));
        if (rec.kind === 'eos') break;
        if (rec.kind === 'memSize') continue;
        const page = rec.offset / TP;
        const blk = this.block(rec.block);
        if (rec.kind === 'page') blk.ram.set(rec.data, rec.offset);
        else if (rec.kind === 'zero') blk.ram.fill(rec.fill, rec.offset, rec.offset + TP);
        else if (rec.kind === 'xbzrle' && !this.listening) {
          if (jsPageOps.xbzrleDecode(rec.data, blk.ram, rec.offset) < 0) throw new Error('bad XBZRLE');
          this.xbzrlePages++;
        } else throw new Error(`unexpected ${rec.kind} record`);
        if (this.listening && blk.received[page]) this.duplicates.push(`${rec.block}@${page}`);
        blk.received[page] = 1;
        const log: PageLog = { block: rec.block, page, postcopy: this.listening, channel: this.channelNo, at: performance.now() };
        this.pages.push(log);
        if (this.trigger && !this.listening && this.pages.length >= this.trigger.n) {
          const t = this.trigger;
          this.trigger = undefined;
          t.fn();
        }
        if (hooks.onPage?.(this, log) === 'stop') return 'stopped';
      }
      await r.decode((c) => decodeFooter(c, s.sectionId, idstr));
    }
  }
}
