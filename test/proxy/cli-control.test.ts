/** `postcopy proxy` CLI (usage, --print) and the proxy's QMP-like control socket. */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { QmpClient } from '../../src/control/qmp-client.js';
import { startProxyControl } from '../../src/proxy/control.js';
import { FaultProxy } from '../../src/proxy/proxy.js';
import { postcopyStream } from '../inspect/streams.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'proxy-cli-'));
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void (out += a.join(' ') + '\n'));
  vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void (err += a.join(' ') + '\n'));
  const code = await main(args);
  vi.restoreAllMocks();
  return { code, out, err };
}

async function sink(): Promise<{ uri: string; received: () => number }> {
  let n = 0;
  const p = path.join(tmp, `sink-${Math.random().toString(36).slice(2)}.sock`);
  const socks: net.Socket[] = [];
  const server = net.createServer((s) => {
    socks.push(s);
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(p, r));
  cleanups.push(() => new Promise<void>((r) => (socks.forEach((s) => s.destroy()), server.close(() => r()))));
  return { uri: `unix:${p}`, received: () => n };
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const t = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > t) throw new Error('timeout');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('postcopy proxy CLI', () => {
  it('--help documents the kind vocabulary and modes; bad usage exits 2 with a reason', async () => {
    const h = await run(['proxy', '--help']);
    expect(h.code).toBe(0);
    for (const k of ['REQ_PAGES_ID', 'RECV_BITMAP_DATA', 'POSTCOPY_RUN', 'in-package', 'blackhole', '--cut-on', '--qmp']) expect(h.out).toContain(k);
    const a = await run(['proxy', 'tcp::0']);
    expect(a.code).toBe(2);
    expect(a.err).toContain('LISTEN-URI and TARGET-URI are required');
    const b = await run(['proxy', 'tcp::0', 'tcp:x:1', '--cut-on', 'REQ_PAGE']);
    expect(b.code).toBe(2);
    expect(b.err).toContain("unknown item kind 'REQ_PAGE'");
    const c = await run(['proxy', 'tcp::0', 'tcp:x:1', '--mode', 'explode']);
    expect(c.err).toContain("bad cut mode 'explode'");
    const d = await run(['proxy', 'tcp::0', 'tcp:x:1', '--cut-on', 'PING:0']);
    expect(d.err).toContain('N must be a positive integer');
  });

  it('--print prints a record file (text and JSON lines); a non-record file is refused', async () => {
    const t = await sink();
    const rec = path.join(tmp, 'r.mpk');
    const p = new FaultProxy({ listen: `unix:${path.join(tmp, 'pp.sock')}`, target: t.uri, record: rec });
    await p.listen();
    const c = net.connect(p.uri.slice(5));
    const bytes = postcopyStream().bytes;
    c.write(bytes);
    await until(() => t.received() === bytes.length);
    c.destroy();
    await p.close();
    const r = await run(['proxy', '--print', rec]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/#1 main  HEADER version=3/);
    expect(r.out).toMatch(/#1 main  PING value=3 packaged=true at=0x[0-9a-f]+/);
    expect(r.out).toContain('conn 1 main POSTCOPY_RUN: 1');
    const j = await run(['proxy', '--print', rec, '--json']);
    const lines = j.out.trim().split('\n').map((l) => JSON.parse(l) as { kind: string });
    expect(lines[0]!.kind).toBe('PROXY_RECORD');
    expect(lines.filter((l) => l.kind === 'PAGE').length).toBe(3);
    const bad = path.join(tmp, 'stream.bin');
    fs.writeFileSync(bad, bytes);
    const e = await run(['proxy', '--print', bad]);
    expect(e.code).toBe(1);
    expect(e.err).toContain('not a postcopy proxy record file');
  });
});

describe('postcopy proxy LISTEN TARGET (running)', () => {
  it('relays, prints items, cuts after BYTES, writes the record, serves --qmp, stops on SIGINT', async () => {
    const t = await sink();
    const rec = path.join(tmp, 'run.mpk');
    const listen = `unix:${path.join(tmp, 'run.sock')}`;
    let out = '';
    let err = '';
    vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void (out += a.join(' ') + '\n'));
    vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void (err += a.join(' ') + '\n'));
    const running = main(['proxy', listen, t.uri, '--cut-after', '1k', '--mode', 'reset', '--record', rec, '--qmp', `unix:${path.join(tmp, 'run-qmp.sock')}`]);
    await until(() => err.includes('postcopy proxy: unix:'));
    const qmp = await QmpClient.connect({ path: path.join(tmp, 'run-qmp.sock') });
    const c = net.connect(listen.slice(5));
    c.on('error', () => undefined);
    c.write(postcopyStream().bytes);
    await until(() => err.includes('CUT (reset, bytes) after main 1024'));
    await until(() => t.received() >= 1024);
    await new Promise((r) => setTimeout(r, 50));
    expect(t.received()).toBe(1024);
    const q = await qmp.execute<{ cuts: unknown[] }>('query-proxy');
    expect(q.cuts).toHaveLength(1);
    qmp.close();
    process.emit('SIGINT');
    const code = await running;
    vi.restoreAllMocks();
    expect(code).toBe(0);
    expect(out).toMatch(/#1 main @0 HEADER \{"version":3\}/);
    expect(out).toContain('OPEN_RETURN_PATH');
    expect(out).not.toContain(' PAGE ');
    expect(err).toMatch(/1 connection\(s\), main \d+ bytes, rp 0 bytes, 1 cut\(s\)/);
    const p = await run(['proxy', '--print', rec]);
    expect(p.out).toContain('#1 proxy CUT mode="reset" reason="bytes" main=1024');
  });
});

describe('control socket', () => {
  it('query-proxy, cut-on (armed at run time), cut, and PROXY_* events', async () => {
    const t = await sink();
    const p = new FaultProxy({ listen: `unix:${path.join(tmp, 'q.sock')}`, target: t.uri });
    await p.listen();
    const ctl = await startProxyControl(p, `unix:${path.join(tmp, 'qmp.sock')}`);
    cleanups.push(() => p.close(), () => ctl.close());
    const qmp = await QmpClient.connect({ path: path.join(tmp, 'qmp.sock') });
    cleanups.push(() => qmp.close());
    await expect(qmp.execute('cut', {})).rejects.toThrow('no open connection to cut');
    await expect(qmp.execute('cut-on', { on: 'NOPE' })).rejects.toThrow(/unknown item kind/);
    await qmp.execute('cut-on', { on: 'POSTCOPY_LISTEN', mode: 'reset' });
    const cutEvent = qmp.waitEvent('PROXY_CUT', undefined, 5000);
    const itemEvent = qmp.waitEvent('PROXY_ITEM', (e) => e.data?.['kind'] === 'PACKAGED', 5000);
    const c = net.connect(p.uri.slice(5));
    c.on('error', () => undefined);
    const bytes = postcopyStream().bytes;
    c.write(bytes);
    const ev = await cutEvent;
    expect(ev.data).toMatchObject({ conn: 1, mode: 'reset', reason: 'kind:POSTCOPY_LISTEN:1', late: 0 });
    expect((await itemEvent).data).toMatchObject({ conn: 1, dir: 'main', kind: 'PACKAGED' });
    const q = await qmp.execute<{ bytes: { main: number }; items: { main: Record<string, number> }; cuts: unknown[]; connections: Array<{ state: string }> }>('query-proxy');
    expect(q.cuts).toHaveLength(1);
    expect(q.items.main['PACKAGED']).toBe(1);
    expect(q.connections[0]!.state).toBe('cut');
    expect(t.received()).toBeLessThan(bytes.length);
    // A manual cut of the next connection.
    const c2 = net.connect(p.uri.slice(5));
    const ended = new Promise<void>((r) => c2.once('end', r));
    c2.write('xyz');
    await until(() => p.query().connections.length === 2 && p.query().connections[1]!.state === 'open');
    const cut = await qmp.execute<{ conn: number; mode: string }>('cut', { mode: 'kill' });
    expect(cut).toMatchObject({ conn: 2, mode: 'kill', reason: 'command' });
    await ended;
  });
});
