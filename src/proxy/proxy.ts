/**
 * FaultProxy: relays migration connections between a source and a
 * destination without changing a byte, decodes both directions live, records
 * the items, and cuts the link on request (kill = FIN, reset = RST,
 * blackhole = silence) at a byte count, at a decoded protocol item, or on
 * command.
 */

import { EventEmitter } from 'node:events';
import { unlinkSync } from 'node:fs';
import net from 'node:net';
import { parseMigrationUri } from '../transport/uri.js';
import { PostcopyError } from '../errors.js';
import { type CutMode, type CutRule, ConnectionMatcher, RuleState } from './cut.js';
import { type ProxyDirection, type ProxyItem, ProxySession, decodeMainStream, decodeReturnPath, isTruncation } from './decoder.js';
import { ChunkQueue } from './queue.js';
import { type ProxyRecord, RecordWriter } from './record.js';

/** Options of {@link FaultProxy}. */
export interface FaultProxyOptions {
  /** Where sources connect: `tcp:HOST:PORT` (port 0 = any free port) or `unix:PATH`. */
  listen: string;
  /** Where the proxy connects for each accepted connection (the destination). */
  target: string;
  /** Cut rules (see cut.ts). */
  cuts?: CutRule[];
  /** Write a record file here. */
  record?: string;
  /** Decode the channels (default true). */
  decode?: boolean;
}

/** A cut that happened. */
export interface ProxyCut {
  conn: number;
  mode: CutMode;
  /** 'bytes', 'kind:KIND:N', or 'command'. */
  reason: string;
  /** Bytes relayed per direction of the connection when it was cut. */
  relayed: { main: number; rp: number };
  /** The item that triggered it, if any. */
  item?: ProxyItem;
  /** Bytes past the intended cut point that had already been relayed (0 = exact). */
  late: number;
}

/** Counters of the proxy (query-proxy). */
export interface ProxyStats {
  connections: Array<{ conn: number; state: ConnState; bytes: { main: number; rp: number } }>;
  bytes: { main: number; rp: number };
  items: { main: Record<string, number>; rp: Record<string, number> };
  cuts: ProxyCut[];
  decodeErrors: Array<{ conn: number; dir: ProxyDirection; message: string }>;
}

/** State of a relayed connection. */
export type ConnState = 'connecting' | 'open' | 'cut' | 'closed';

/** Typed events of FaultProxy. */
export interface FaultProxyEvents {
  /** Every decoded item (also emitted under its kind name, e.g. 'REQ_PAGES'). */
  item: [item: ProxyItem, conn: number];
  connection: [conn: number];
  cut: [cut: ProxyCut];
  close: [conn: number];
  'decode-error': [error: Error, conn: number, dir: ProxyDirection];
  'connect-error': [error: Error, conn: number];
}

/** Longest time bytes are held back for an unfinished item (see FaultProxy.flush). */
const HOLD_MS = 200;

class Pipe {
  received = 0;
  relayed = 0;
  /** Cut when `relayed` reaches this offset. */
  limit = Infinity;
  limitCut: Omit<ProxyCut, 'relayed' | 'late' | 'conn'> | undefined;
  /** The rule that set `limit` (counted as fired when the cut happens). */
  limitRule: RuleState | undefined;
  pending: Uint8Array[] = [];
  scheduled = false;
  /** Every byte before this offset has been decoded (Infinity once decoding stopped). */
  committed = 0;
  /** Bytes held back for the decoder are released once no byte has moved for HOLD_MS. */
  holdTimer: NodeJS.Timeout | undefined;
  /** `received` when the hold timer was (re)started. */
  receivedAtHold = 0;
  /** Reading `from` is paused until `to` drains (one 'drain' listener however many writes were refused). */
  awaitingDrain = false;
  readonly queue = new ChunkQueue();
  constructor(
    readonly dir: ProxyDirection,
    readonly from: net.Socket,
    readonly to: net.Socket,
  ) {}
}

class Conn {
  state: ConnState = 'connecting';
  main!: Pipe;
  rp!: Pipe;
  readonly matcher: ConnectionMatcher;
  constructor(
    readonly id: number,
    readonly client: net.Socket,
    readonly server: net.Socket,
    rules: readonly RuleState[],
  ) {
    this.matcher = new ConnectionMatcher(rules);
  }
  pipe(dir: ProxyDirection): Pipe {
    return dir === 'main' ? this.main : this.rp;
  }
}

/** Typed listeners: the events of {@link FaultProxyEvents}, or an item kind name ('REQ_PAGES', 'PONG', ...). */
export interface FaultProxy {
  on<K extends keyof FaultProxyEvents>(event: K, listener: (...args: FaultProxyEvents[K]) => void): this;
  on(kind: string, listener: (item: ProxyItem, conn: number) => void): this;
  once<K extends keyof FaultProxyEvents>(event: K, listener: (...args: FaultProxyEvents[K]) => void): this;
  once(kind: string, listener: (item: ProxyItem, conn: number) => void): this;
}

/**
 * The decoding drill proxy (see the module comment). Usage:
 * `const p = new FaultProxy({ listen, target, cuts }); await p.listen();`
 * then point the source at `p.uri`.
 */
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class FaultProxy extends EventEmitter {
  private server: net.Server | undefined;
  private readonly conns: Conn[] = [];
  private readonly rules: RuleState[];
  private readonly session = new ProxySession();
  private readonly recorder: RecordWriter | undefined;
  private readonly t0 = performance.now();
  private readonly stats: ProxyStats = { connections: [], bytes: { main: 0, rp: 0 }, items: { main: {}, rp: {} }, cuts: [], decodeErrors: [] };
  private unixPath: string | undefined;
  private boundUri = '';

  constructor(readonly options: FaultProxyOptions) {
    super();
    this.rules = (options.cuts ?? []).map((r) => new RuleState(r));
    if (options.record) this.recorder = new RecordWriter(options.record, { listen: options.listen, target: options.target });
  }

  /** The URI sources should connect to (with the real port when listening on port 0). */
  get uri(): string {
    return this.boundUri;
  }

  /** Add a cut rule at run time (applies to current and later connections). */
  addCut(rule: CutRule): void {
    // Matchers share this.rules: open connections see the rule at once and count from now.
    this.rules.push(new RuleState(rule));
    for (const c of this.conns) if (c.state === 'open') this.applyByteLimit(c);
  }

  /** Start listening. */
  async listen(): Promise<string> {
    const u = parseMigrationUri(this.options.listen, 'incoming');
    if (u.kind !== 'tcp' && u.kind !== 'unix') throw new PostcopyError('PROXY', `proxy listens on tcp: or unix: URIs, not '${this.options.listen}'`);
    parseTarget(this.options.target);
    const server = net.createServer({ pauseOnConnect: true }, (sock) => this.accept(sock));
    this.server = server;
    const opts: net.ListenOptions = u.kind === 'tcp' ? { host: u.host || '0.0.0.0', port: u.port } : { path: u.path };
    if (u.kind === 'unix') {
      try {
        unlinkSync(u.path);
      } catch {
        /* absent */
      }
      this.unixPath = u.path;
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    const a = server.address();
    if (u.kind === 'tcp' && a && typeof a === 'object') {
      const host = u.host === '' || u.host === '0.0.0.0' ? '127.0.0.1' : u.host;
      this.boundUri = `tcp:${host.includes(':') ? `[${host}]` : host}:${a.port}`;
    } else this.boundUri = this.options.listen;
    return this.boundUri;
  }

  /** Counters: bytes and items per direction, connections, cuts, decode errors. */
  query(): ProxyStats {
    this.stats.connections = this.conns.map((c) => ({ conn: c.id, state: c.state, bytes: { main: c.main?.relayed ?? 0, rp: c.rp?.relayed ?? 0 } }));
    return structuredClone(this.stats);
  }

  /** Cut connection `conn` (default: the newest open one) now. Returns the cut, or undefined if none is open. */
  cut(mode: CutMode, conn?: number): ProxyCut | undefined {
    const c = conn !== undefined ? this.conns.find((x) => x.id === conn) : [...this.conns].reverse().find((x) => x.state === 'open');
    if (!c || c.state !== 'open') return undefined;
    return this.doCut(c, { mode, reason: 'command' }, 0);
  }

  /** Stop listening, drop every connection, close the record file. */
  async close(): Promise<void> {
    for (const c of this.conns) {
      c.client.destroy();
      c.server.destroy();
      c.main?.queue.end();
      c.rp?.queue.end();
    }
    if (this.server) await new Promise<void>((r) => this.server!.close(() => r()));
    if (this.unixPath) {
      try {
        unlinkSync(this.unixPath);
      } catch {
        /* gone */
      }
    }
    await this.recorder?.close();
  }

  private now(): number {
    return performance.now() - this.t0;
  }

  private log(conn: number, kind: string, fields: ProxyRecord['fields']): void {
    this.recorder?.write({ t: this.now(), dir: 'proxy', conn, kind, fields });
  }

  private accept(client: net.Socket): void {
    const id = this.conns.length + 1;
    const target = parseTarget(this.options.target);
    const server = net.connect(target);
    const c = new Conn(id, client, server, this.rules);
    c.main = new Pipe('main', client, server);
    c.rp = new Pipe('rp', server, client);
    this.conns.push(c);
    client.on('error', () => undefined);
    server.on('error', (e) => {
      if (c.state === 'connecting') {
        this.log(id, 'CONNECT_FAILED', { message: e.message });
        this.emit('connect-error', new PostcopyError('PROXY', `connection ${id}: cannot connect to ${this.options.target}: ${e.message}`), id);
        c.state = 'closed';
        client.destroy();
      }
    });
    server.once('connect', () => {
      if (c.state !== 'connecting') return;
      c.state = 'open';
      if (server.remoteFamily) server.setNoDelay(true);
      if (client.remoteFamily) client.setNoDelay(true);
      this.log(id, 'CONNECT', {});
      this.emit('connection', id);
      this.startPipe(c, c.main);
      this.startPipe(c, c.rp);
      this.applyByteLimit(c);
      client.resume();
    });
  }

  private applyByteLimit(c: Conn): void {
    const b = c.matcher.byteLimit();
    if (!b) return;
    this.setLimit(c, c.main, b.bytes, { mode: b.rule.rule.mode, reason: 'bytes', rule: b.rule });
  }

  private setLimit(c: Conn, p: Pipe, offset: number, why: { mode: CutMode; reason: string; rule: RuleState; item?: ProxyItem }): void {
    if (offset >= p.limit) return;
    if (offset <= p.relayed) {
      why.rule.fired++;
      this.doCut(c, { mode: why.mode, reason: why.reason, ...(why.item ? { item: why.item } : {}) }, p.relayed - offset);
      return;
    }
    p.limit = offset;
    p.limitCut = { mode: why.mode, reason: why.reason, ...(why.item ? { item: why.item } : {}) };
    p.limitRule = why.rule;
  }

  private startPipe(c: Conn, p: Pipe): void {
    if (this.options.decode !== false) this.startDecoder(c, p);
    p.from.on('data', (chunk: Buffer) => {
      if (c.state !== 'open') return;
      p.received += chunk.length;
      this.stats.bytes[p.dir] += chunk.length;
      const decoding = this.options.decode !== false;
      // The same chunk goes to the decoder: Node never reuses a socket's read buffers and writes do not modify them.
      if (decoding) p.queue.push(chunk);
      if (p.pending.length > 0 || (decoding && c.matcher.armedFor(p.dir))) {
        p.pending.push(chunk);
        this.schedule(c, p);
      } else this.forward(c, p, chunk);
    });
    p.from.on('end', () => {
      p.queue.end();
      if (c.state !== 'open') return;
      const finish = (): void => {
        if (p.pending.length > 0 && c.state === 'open') return void setTimeout(finish, 1);
        if (c.state === 'open') p.to.end();
      };
      finish();
    });
    p.from.on('close', () => {
      p.queue.end();
      if (c.state === 'open' && p.from.errored) {
        const code = (p.from.errored as NodeJS.ErrnoException).code;
        if (code === 'ECONNRESET' && typeof p.to.resetAndDestroy === 'function' && p.to.remoteFamily) p.to.resetAndDestroy();
        else p.to.destroy();
      }
      if (c.client.destroyed && c.server.destroyed && c.state !== 'closed') {
        if (c.state === 'open') c.state = 'closed';
        this.log(c.id, 'CLOSE', {});
        this.emit('close', c.id);
      }
    });
  }

  private schedule(c: Conn, p: Pipe): void {
    if (p.scheduled) return;
    p.scheduled = true;
    // Decoding runs in microtasks: by the time this runs, every complete item received has been seen.
    setImmediate(() => {
      p.scheduled = false;
      this.flush(c, p, false);
    });
  }

  /**
   * Relay pending bytes. While a kind rule is armed for this direction, bytes
   * of an item the decoder has not finished are held back (so a cut "before"
   * or "after" an item is exact even when the item spans many chunks); a
   * decoder waiting HOLD_MS for bytes that do not come releases them. The
   * wait restarts whenever bytes arrive or are relayed: a slow trickle (an
   * item spanning many reads over seconds) is not a stall.
   */
  private flush(c: Conn, p: Pipe, force: boolean): void {
    const hold = !force && c.matcher.armedFor(p.dir);
    const upTo = hold ? p.committed : Infinity;
    const before = p.relayed;
    while (p.pending.length > 0 && c.state === 'open') {
      const room = upTo - p.relayed;
      if (room <= 0) break;
      const chunk = p.pending[0]!;
      if (chunk.length <= room) {
        p.pending.shift();
        this.forward(c, p, chunk);
      } else {
        p.pending[0] = chunk.subarray(room);
        this.forward(c, p, chunk.subarray(0, room));
      }
    }
    if (p.pending.length === 0 || c.state !== 'open' || p.relayed !== before || p.received !== p.receivedAtHold) {
      clearTimeout(p.holdTimer);
      p.holdTimer = undefined;
    }
    if (p.pending.length > 0 && c.state === 'open' && !p.holdTimer) {
      p.receivedAtHold = p.received;
      p.holdTimer = setTimeout(() => {
        p.holdTimer = undefined;
        this.flush(c, p, true);
      }, HOLD_MS);
    }
  }

  private forward(c: Conn, p: Pipe, chunk: Uint8Array): void {
    let data = chunk;
    const cutHere = p.relayed + data.length >= p.limit;
    if (cutHere) data = data.subarray(0, p.limit - p.relayed);
    if (data.length > 0) {
      p.relayed += data.length;
      if (!p.to.write(data) && !cutHere && !p.awaitingDrain) {
        p.from.pause();
        p.awaitingDrain = true;
        p.to.once('drain', () => {
          p.awaitingDrain = false;
          if (c.state === 'open') p.from.resume();
        });
      }
    }
    if (cutHere) {
      if (p.limitRule) p.limitRule.fired++;
      this.doCut(c, p.limitCut!, 0);
    }
  }

  private startDecoder(c: Conn, p: Pipe): void {
    const advance = (offset: number): void => {
      if (offset <= p.committed) return;
      p.committed = offset;
      if (p.pending.length > 0) this.schedule(c, p);
    };
    const onItem = (item: ProxyItem): void => {
      advance(item.end);
      const counts = this.stats.items[item.dir];
      counts[item.kind] = (counts[item.kind] ?? 0) + 1;
      this.recorder?.write({ t: this.now(), dir: item.dir, conn: c.id, kind: item.kind, fields: { ...item.fields, at: item.at } });
      this.emit('item', item, c.id);
      this.emit(item.kind, item, c.id);
      if (c.state !== 'open') return;
      const m = c.matcher.match(item);
      if (m) {
        const t = m.rule.rule.trigger;
        const reason = t.type === 'kind' ? `kind:${t.dir ? t.dir + ':' : ''}${t.kind}:${t.nth}` : 'bytes';
        this.setLimit(c, c.pipe(item.dir), m.offset, { mode: m.rule.rule.mode, reason, rule: m.rule, item });
      }
    };
    const run = p.dir === 'main' ? decodeMainStream(p.queue, this.session, onItem, advance) : decodeReturnPath(p.queue, onItem);
    run.then(() => advance(Infinity), (e: unknown) => {
      p.queue.drop();
      advance(Infinity);
      const err = e instanceof Error ? e : new Error(String(e));
      // A stream that ends mid-item because of a cut or a peer closing is not a decode error.
      if (isTruncation(err) && c.state !== 'open') return;
      if (isTruncation(err) && p.from.destroyed) return;
      this.stats.decodeErrors.push({ conn: c.id, dir: p.dir, message: err.message });
      this.log(c.id, 'DECODE_ERROR', { dir: p.dir, message: err.message });
      this.emit('decode-error', err, c.id, p.dir);
    });
  }

  private doCut(c: Conn, why: Omit<ProxyCut, 'relayed' | 'late' | 'conn'>, late: number): ProxyCut {
    c.state = 'cut';
    const cut: ProxyCut = { conn: c.id, ...why, relayed: { main: c.main.relayed, rp: c.rp.relayed }, late };
    this.stats.cuts.push(cut);
    const fields: ProxyRecord['fields'] = { mode: cut.mode, reason: cut.reason, main: cut.relayed.main, rp: cut.relayed.rp, late };
    if (cut.item) fields['item'] = cut.item.kind;
    this.log(c.id, 'CUT', fields);
    c.main.pending.length = 0;
    c.rp.pending.length = 0;
    c.main.queue.end();
    c.rp.queue.end();
    for (const s of [c.client, c.server]) {
      s.removeAllListeners('data');
      if (why.mode === 'blackhole') {
        s.pause();
      } else if (why.mode === 'reset') {
        // Bytes already relayed leave Node's write queue first, so "cut after N bytes" holds.
        const reset = (): void => {
          if (s.remoteFamily && typeof s.resetAndDestroy === 'function') s.resetAndDestroy();
          else s.destroy(); // unix sockets have no RST: the peer sees the close
        };
        s.on('data', () => undefined);
        if (s.writableLength > 0 && !s.destroyed) {
          s.once('drain', reset);
          s.once('close', () => s.removeListener('drain', reset));
          setTimeout(reset, 1000).unref();
        } else reset();
      } else {
        s.on('data', () => undefined);
        s.end();
        setTimeout(() => s.destroy(), 1000).unref();
      }
    }
    this.emit('cut', cut);
    return cut;
  }
}

function parseTarget(uri: string): net.NetConnectOpts {
  const u = parseMigrationUri(uri, 'outgoing');
  if (u.kind === 'tcp') return { host: u.host || 'localhost', port: u.port };
  if (u.kind === 'unix') return { path: u.path };
  throw new PostcopyError('PROXY', `proxy connects to tcp: or unix: URIs, not '${uri}'`);
}
