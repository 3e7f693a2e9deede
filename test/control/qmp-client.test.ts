import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, parseQmpTarget, QMP_DISCONNECTED, QMP_TIMEOUT } from '../../src/control/qmp-client.js';
import { QmpError } from '../../src/errors.js';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] } };

type Handler = (msg: Record<string, unknown>, sock: net.Socket) => void;

/** A tiny fake QMP server: sends the greeting (optionally split), hands each parsed line to `handler`. */
async function fakeServer(handler: Handler, opts: { greetingChunks?: string[] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-test-'));
  const sockPath = path.join(dir, 'qmp.sock');
  const conns: net.Socket[] = [];
  const received: Record<string, unknown>[] = [];
  const server = net.createServer((sock) => {
    conns.push(sock);
    const chunks = opts.greetingChunks ?? [JSON.stringify(GREETING) + '\r\n'];
    for (const c of chunks) sock.write(c);
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        received.push(msg);
        if (msg['execute'] === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: msg['id'] }) + '\r\n');
        else handler(msg, sock);
      }
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  const close = async () => {
    for (const c of conns) c.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  cleanups.push(close);
  return { sockPath, conns, received, close };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const reply = (sock: net.Socket, obj: unknown) => sock.write(JSON.stringify(obj) + '\r\n');

describe('QmpClient', () => {
  it('reads a greeting split across chunks, negotiates, and returns command results', async () => {
    const g = JSON.stringify(GREETING) + '\r\n';
    const srv = await fakeServer(
      (msg, sock) => reply(sock, { return: { status: 'running', echo: msg['arguments'] ?? null }, id: msg['id'] }),
      { greetingChunks: [g.slice(0, 7), g.slice(7, 30), g.slice(30)] },
    );
    const qmp = await QmpClient.connect(`unix:${srv.sockPath}`);
    expect(qmp.greeting.QMP.version.qemu.minor).toBe(2);
    expect(srv.received[0]!['execute']).toBe('qmp_capabilities');
    const r = await qmp.execute<{ status: string; echo: unknown }>('query-status', { a: 1 });
    expect(r).toEqual({ status: 'running', echo: { a: 1 } });
    await qmp.close();
    expect(qmp.isConnected).toBe(false);
  });

  it('passes enable:[oob] and sends exec-oob', async () => {
    const srv = await fakeServer((msg, sock) => reply(sock, { return: Object.keys(msg)[0], id: msg['id'] }));
    const qmp = await QmpClient.connect(srv.sockPath, { enable: ['oob'] });
    expect(srv.received[0]!['arguments']).toEqual({ enable: ['oob'] });
    expect(await qmp.execute('migrate-pause', undefined, { oob: true })).toBe('exec-oob');
    expect(await qmp.execute('query-migrate')).toBe('execute');
    await qmp.close();
  });

  it('matches out-of-order replies by id, with events and partial lines in between', async () => {
    const held: Record<string, unknown>[] = [];
    const srv = await fakeServer((msg, sock) => {
      held.push(msg);
      if (held.length < 3) return;
      // Answer in reverse order, one byte-split stream with an event in the middle.
      const text =
        JSON.stringify({ return: held[2]!['execute'], id: held[2]!['id'] }) + '\r\n' +
        JSON.stringify({ event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } }) + '\r\n' +
        JSON.stringify({ return: held[0]!['execute'], id: held[0]!['id'] }) + '\r\n' +
        JSON.stringify({ return: held[1]!['execute'], id: held[1]!['id'] }) + '\r\n';
      let i = 0;
      const tick = () => {
        if (i >= text.length) return;
        sock.write(text.slice(i, i + 13));
        i += 13;
        setImmediate(tick);
      };
      tick();
    });
    const qmp = await QmpClient.connect(srv.sockPath);
    const events: string[] = [];
    qmp.on('event', (e) => events.push(e.event));
    const r = await Promise.all([qmp.execute('a'), qmp.execute('b'), qmp.execute('c')]);
    expect(r).toEqual(['a', 'b', 'c']);
    expect(events).toEqual(['STOP']);
    await qmp.close();
  });

  it('rejects with QmpError carrying desc and class', async () => {
    const srv = await fakeServer((msg, sock) =>
      reply(sock, { id: msg['id'], error: { class: 'CommandNotFound', desc: 'The command bogus has not been found' } }),
    );
    const qmp = await QmpClient.connect(srv.sockPath);
    const err = await qmp.execute('bogus').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).klass).toBe('CommandNotFound');
    expect((err as QmpError).message).toBe('The command bogus has not been found');
    await qmp.close();
  });

  it('waitEvent filters by name and predicate; events() iterates until close', async () => {
    const srv = await fakeServer(() => {});
    const qmp = await QmpClient.connect(srv.sockPath);
    const it = qmp.events();
    const w = qmp.waitEvent('MIGRATION', (e) => e.data['status'] === 'completed', 2000);
    const sock = srv.conns[0]!;
    for (const status of ['setup', 'active', 'completed']) {
      reply(sock, { event: 'MIGRATION', data: { status }, timestamp: { seconds: 0, microseconds: 0 } });
    }
    reply(sock, { event: 'RESUME', data: {}, timestamp: { seconds: 0, microseconds: 0 } });
    const e = await w;
    expect(e.data['status']).toBe('completed');
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const n = await it.next();
      const ev = n.value as { event: string; data: Record<string, unknown> };
      seen.push(`${ev.event}:${String(ev.data['status'] ?? '')}`);
    }
    expect(seen).toEqual(['MIGRATION:setup', 'MIGRATION:active', 'MIGRATION:completed', 'RESUME:']);
    const end = it.next();
    srv.conns[0]!.destroy();
    expect((await end).done).toBe(true);
  });

  it('waitEvent and execute time out with class Timeout', async () => {
    const srv = await fakeServer(() => {});
    const qmp = await QmpClient.connect(srv.sockPath);
    const t0 = Date.now();
    const err = await qmp.waitEvent('NEVER', undefined, 50).catch((e: unknown) => e);
    expect((err as QmpError).klass).toBe(QMP_TIMEOUT);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    const err2 = await qmp.execute('slow', undefined, { timeoutMs: 30 }).catch((e: unknown) => e);
    expect((err2 as QmpError).klass).toBe(QMP_TIMEOUT);
    await qmp.close();
  });

  it('rejects every pending call and waiter when the peer dies, and later calls too', async () => {
    const srv = await fakeServer((msg, sock) => {
      if (msg['execute'] === 'die') sock.destroy();
    });
    const qmp = await QmpClient.connect(srv.sockPath);
    const p1 = qmp.execute('hang').catch((e: unknown) => e);
    const w = qmp.waitEvent('X', undefined, 5000).catch((e: unknown) => e);
    const p2 = qmp.execute('die').catch((e: unknown) => e);
    for (const e of await Promise.all([p1, p2, w])) {
      expect(e).toBeInstanceOf(QmpError);
      expect((e as QmpError).klass).toBe(QMP_DISCONNECTED);
    }
    await qmp.closed;
    const p3 = await qmp.execute('after').catch((e: unknown) => e);
    expect((p3 as QmpError).klass).toBe(QMP_DISCONNECTED);
  });

  it('fails to connect with a clear error: no socket, no greeting, junk greeting', async () => {
    const e1 = await QmpClient.connect('/nonexistent/qmp.sock', { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(QmpError);
    expect((e1 as Error).message).toMatch(/connect failed/);
    const silent = await fakeServer(() => {}, { greetingChunks: [] });
    const e2 = await QmpClient.connect(silent.sockPath, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect((e2 as QmpError).klass).toBe(QMP_TIMEOUT);
    const junk = await fakeServer(() => {}, { greetingChunks: ['{"hello": 1}\n'] });
    const e3 = await QmpClient.connect(junk.sockPath, { timeoutMs: 500 }).catch((e: unknown) => e);
    expect((e3 as Error).message).toMatch(/not a QMP greeting/);
  });

  it('connects over tcp', async () => {
    const server = net.createServer((sock) => {
      sock.write(JSON.stringify(GREETING) + '\n');
      sock.on('data', (d) => {
        for (const line of d.toString().split('\n').filter(Boolean)) {
          const msg = JSON.parse(line) as Record<string, unknown>;
          reply(sock, { return: { via: 'tcp' }, id: msg['id'] });
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as net.AddressInfo).port;
    const qmp = await QmpClient.connect(`tcp:127.0.0.1:${port}`);
    expect(await qmp.execute('x')).toEqual({ via: 'tcp' });
    await qmp.close();
  });

  it('parses targets', () => {
    expect(parseQmpTarget('unix:/a/b,server=on')).toEqual({ path: '/a/b' });
    expect(parseQmpTarget('tcp:[::1]:4444')).toEqual({ host: '::1', port: 4444 });
    expect(parseQmpTarget('/x.sock')).toEqual({ path: '/x.sock' });
    expect(() => parseQmpTarget('tcp:host:99999')).toThrow(QmpError);
  });
});
