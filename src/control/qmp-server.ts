/**
 * A QMP server that behaves like QEMU 7.2's monitor from the outside:
 * greeting, capabilities negotiation, `execute`/`exec-oob` with `id`,
 * replies and errors worded and ordered like QEMU's (captured from
 * qemu-system-x86_64 7.2.22), events broadcast to every negotiated client,
 * several clients at once, lines ending in "\r\n".
 *
 * The owner registers the commands (`register(name, handler)`); handlers may
 * be async and throw QmpError (class + desc) or any Error (GenericError).
 * Built in: qmp_capabilities, query-version, query-commands.
 */
import { unlinkSync } from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { QmpError } from '../errors.js';
import type { SocketAddress } from '../transport/uri.js';
import { parseMigrationUri } from '../transport/uri.js';
import type { EventBus, QmpEvent } from './events.js';
import { isQmpObject, JsonParseError, parseQmpJson, toQmpJson, type JsonOut, type QmpObject, type QmpValue } from './json.js';
import { JsonSplitter } from './json-stream.js';

/** What a handler learns about the request. */
export interface QmpRequestContext {
  /** The connection that sent it. */
  readonly client: QmpConnection;
  /** Sent as exec-oob. */
  readonly oob: boolean;
}

/** A command implementation. Its return value (undefined → `{}`) is the reply's `return`. */
export type QmpHandler = (args: QmpObject, ctx: QmpRequestContext) => unknown;

/** Options of a registered command. */
export interface QmpCommandOptions {
  /** May run out of band (exec-oob), like migrate-pause and migrate-recover. */
  allowOob?: boolean;
}

/** Server options. */
export interface QmpServerOptions {
  /** Reported version (default 7.2.0, the QEMU we imitate). */
  version?: { major: number; minor: number; micro: number };
  /** Reported package string (default "postcopy"). */
  package?: string;
  /** Events published here are sent to every negotiated client. */
  bus?: EventBus;
}

/** One connected client. */
export interface QmpConnection {
  /** True after qmp_capabilities. */
  readonly negotiated: boolean;
  /** True when the client enabled the oob capability. */
  readonly oob: boolean;
  /** Send one event to this client (if negotiated). */
  sendEvent(ev: QmpEvent): void;
  /** Drop the connection. */
  close(): void;
}

class Connection implements QmpConnection {
  negotiated = false;
  oob = false;
  private queue: Promise<void> = Promise.resolve();
  private readonly splitter = new JsonSplitter();

  constructor(
    private readonly server: QmpServer,
    readonly stream: Duplex,
  ) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      for (const text of this.splitter.push(chunk)) this.receive(text);
    });
    stream.on('error', () => {});
  }

  write(obj: JsonOut): void {
    if (!this.stream.destroyed && this.stream.writable) this.stream.write(toQmpJson(obj) + '\r\n');
  }

  sendEvent(ev: QmpEvent): void {
    if (!this.negotiated) return;
    this.write({ timestamp: { ...ev.timestamp }, event: ev.event, data: ev.data });
  }

  close(): void {
    this.stream.destroy();
  }

  private receive(text: string): void {
    let req: QmpValue;
    try {
      req = parseQmpJson(text);
    } catch (e) {
      const desc = e instanceof JsonParseError ? e.message : 'JSON parse error';
      this.enqueue(async () => this.write({ error: { class: 'GenericError', desc } }));
      return;
    }
    const id = isQmpObject(req) && Object.prototype.hasOwnProperty.call(req, 'id') ? req.id : undefined;
    const oob = isQmpObject(req) && Object.prototype.hasOwnProperty.call(req, 'exec-oob');
    const run = async (): Promise<void> => {
      try {
        const ret = await this.server.dispatch(this, req);
        this.write(id === undefined ? { return: ret } : { return: ret, id });
      } catch (e) {
        const error =
          e instanceof QmpError
            ? { class: e.klass, desc: e.message }
            : { class: 'GenericError', desc: e instanceof Error ? e.message : String(e) };
        this.write(id === undefined ? { error } : { id, error });
      }
    };
    if (oob && this.oob) void run();
    else this.enqueue(run);
  }

  private enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn, fn);
  }
}

/** QMP server; see the module comment. */
export class QmpServer {
  private readonly commands = new Map<string, { handler: QmpHandler; opts: QmpCommandOptions }>();
  private readonly connections = new Set<Connection>();
  private readonly servers: net.Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly unsubscribe: (() => void) | undefined;
  private readonly version: { major: number; minor: number; micro: number };
  private readonly pkg: string;

  constructor(opts: QmpServerOptions = {}) {
    this.version = opts.version ?? { major: 7, minor: 2, micro: 0 };
    this.pkg = opts.package ?? 'postcopy';
    this.unsubscribe = opts.bus?.subscribe((ev) => this.broadcast(ev));
    this.register('qmp_capabilities', (args, ctx) => this.negotiate(args, ctx.client as Connection));
    this.register('query-version', () => ({
      qemu: { major: this.version.major, minor: this.version.minor, micro: this.version.micro },
      package: this.pkg,
    }));
    this.register('query-commands', () => [...this.commands.keys()].map((name) => ({ name })));
  }

  /** Register (or replace) a command. */
  register(name: string, handler: QmpHandler, opts: QmpCommandOptions = {}): void {
    this.commands.set(name, { handler, opts });
  }

  /** Remove a command. */
  unregister(name: string): boolean {
    return this.commands.delete(name);
  }

  /** Connected clients. */
  get clients(): readonly QmpConnection[] {
    return [...this.connections];
  }

  /** The greeting every client receives first. */
  greeting(): JsonOut {
    return {
      QMP: {
        version: {
          qemu: { major: this.version.major, minor: this.version.minor, micro: this.version.micro },
          package: this.pkg,
        },
        capabilities: ['oob'],
      },
    };
  }

  /** Send an event to every negotiated client. */
  broadcast(ev: QmpEvent): void {
    for (const c of this.connections) c.sendEvent(ev);
  }

  /** Serve one already connected stream (a socket, stdio, an in-memory channel). */
  attach(stream: Duplex): QmpConnection {
    const c = new Connection(this, stream);
    this.connections.add(c);
    stream.once('close', () => this.connections.delete(c));
    c.write(this.greeting());
    return c;
  }

  /**
   * Listen on `unix:PATH`, `tcp:HOST:PORT` or a bare path (unix). Resolves
   * with the bound address (port 0 picks a free port).
   */
  async listen(address: string): Promise<SocketAddress> {
    const server = net.createServer((sock) => {
      if (sock.remoteFamily) sock.setNoDelay(true);
      this.attach(sock);
    });
    const u = address.startsWith('tcp:') || address.startsWith('unix:') ? parseMigrationUri(address, 'incoming') : undefined;
    const opts: net.ListenOptions =
      u?.kind === 'tcp' ? { host: u.host || '0.0.0.0', port: u.port } : { path: u?.kind === 'unix' ? u.path : address };
    if (opts.path) {
      try {
        unlinkSync(opts.path);
      } catch {
        /* absent */
      }
      this.unixPaths.push(opts.path);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.servers.push(server);
    const a = server.address();
    if (a && typeof a === 'object') {
      return a.family === 'IPv6'
        ? { port: String(a.port), ipv6: true, host: a.address, type: 'inet' }
        : { port: String(a.port), ipv4: true, host: a.address, type: 'inet' };
    }
    return { path: String(a), type: 'unix' };
  }

  /** Stop listening and drop every client. */
  async close(): Promise<void> {
    this.unsubscribe?.();
    for (const c of this.connections) c.close();
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    for (const p of this.unixPaths) {
      try {
        unlinkSync(p);
      } catch {
        /* gone */
      }
    }
  }

  private negotiate(args: QmpObject, c: Connection): JsonOut {
    if (c.negotiated) {
      throw new QmpError('Capabilities negotiation is already complete, command ignored', 'CommandNotFound');
    }
    for (const k of Object.keys(args)) {
      if (k !== 'enable') throw new QmpError(`Parameter '${k}' is unexpected`);
    }
    let oob = false;
    if (args.enable !== undefined) {
      if (!Array.isArray(args.enable)) throw new QmpError("Invalid parameter type for 'enable', expected: array");
      for (const cap of args.enable) {
        if (typeof cap !== 'string') throw new QmpError("Invalid parameter type for 'enable[0]', expected: string");
        // QEMU 7.2 words this one with the name 'null'.
        if (cap !== 'oob') throw new QmpError(`Parameter 'null' does not accept value '${cap}'`);
        oob = true;
      }
    }
    c.negotiated = true;
    c.oob = oob;
    return {};
  }

  /** Validate a request's envelope and run its command. */
  async dispatch(c: Connection, req: QmpValue): Promise<JsonOut> {
    if (!isQmpObject(req)) throw new QmpError('QMP input must be a JSON object');
    const oob = Object.prototype.hasOwnProperty.call(req, 'exec-oob');
    const key = oob && c.oob ? 'exec-oob' : 'execute';
    if (key === 'exec-oob' && Object.prototype.hasOwnProperty.call(req, 'execute')) {
      throw new QmpError("QMP input member 'execute' clashes with 'exec-oob'");
    }
    for (const k of Object.keys(req)) {
      if (k !== key && k !== 'arguments' && k !== 'id') throw new QmpError(`QMP input member '${k}' is unexpected`);
    }
    if (!Object.prototype.hasOwnProperty.call(req, key)) throw new QmpError(`QMP input lacks member '${key}'`);
    const name = req[key];
    if (typeof name !== 'string') throw new QmpError(`QMP input member '${key}' must be a string`);
    const args = req.arguments === undefined ? {} : req.arguments;
    if (!isQmpObject(args)) throw new QmpError("QMP input member 'arguments' must be an object");
    if (!c.negotiated && name !== 'qmp_capabilities') {
      throw new QmpError("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound');
    }
    const cmd = this.commands.get(name);
    if (!cmd) throw new QmpError(`The command ${name} has not been found`, 'CommandNotFound');
    if (oob && !cmd.opts.allowOob) throw new QmpError(`The command ${name} does not support OOB`);
    const ret: unknown = await cmd.handler(args, { client: c, oob });
    return ret === undefined ? {} : ret;
  }
}
