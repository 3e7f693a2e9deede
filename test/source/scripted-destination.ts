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

/** The scripted destination for one block "ram". */
export class ScriptedDestination {
  readonly ram: Uint8Array;
  readonly received: Uint8Array;
  readonly pages: PageLog[] = [];
  readonly items: string[] = [];
  readonly pings: number[] = [];
  /** Pages that arrived after LISTEN although already received (must stay empty). */
  readonly duplicates: number[] = [];
  /** Pages named by POSTCOPY_RAM_DISCARD ranges. */
  readonly discarded = new Set<number>();
  listening = false;
  /** XBZRLE records applied (precopy only; the postcopy decoder refuses them). */
  xbzrlePages = 0;
  channelNo = -1;
  private ch: Duplex | undefined;
  private trigger: { n: number; fn: () => void } | undefined;
  private readonly names = new Map<number, string>();

  constructor(
    readonly size: number,
    readonly hooks: DestHooks = {},
  ) {
    this.ram = new Uint8Array(size);
    this.received = new Uint8Array(size / TP);
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

  /** Pages not received yet. */
  missing(): number[] {
    const out: number[] = [];
    this.received.forEach((r, p) => r || out.push(p));
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
              this.received.fill(0, rg.start / TP, (rg.start + rg.length) / TP);
              for (let p = rg.start / TP; p < (rg.start + rg.length) / TP; p++) this.discarded.add(p);
              this.ram.fill(0, rg.start, rg.start + rg.length);
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
            const bits = new Uint8Array(recvBitmapSize(this.size));
            this.received.forEach((v, p) => v && (bits[p >>> 3]! |= 1 << (p & 7)));
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
        if (rec.kind === 'page') this.ram.set(rec.data, rec.offset);
        else if (rec.kind === 'zero') this.ram.fill(rec.fill, rec.offset, rec.offset + TP);
        else if (rec.kind === 'xbzrle' && !this.listening) {
          if (jsPageOps.xbzrleDecode(rec.data, this.ram, rec.offset) < 0) throw new Error('bad XBZRLE');
          this.xbzrlePages++;
        }
        else throw new Error(`unexpected ${rec.kind} record`);
        if (this.listening && this.received[page]) this.duplicates.push(page);
        this.received[page] = 1;
        const log: PageLog = { page, postcopy: this.listening, channel: this.channelNo, at: performance.now() };
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
