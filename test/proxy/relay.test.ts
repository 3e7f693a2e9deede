/** FaultProxy relaying: byte-identical in both directions, cut modes as the peers see them, cuts at exact items. */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy, type FaultProxyOptions, type ProxyCut } from '../../src/proxy/proxy.js';
import type { ProxyItem } from '../../src/proxy/decoder.js';
import { parseCutOn } from '../../src/proxy/cut.js';
import { formatRecords, readRecordFile } from '../../src/proxy/record.js';
import { encodeRpMessage } from '../../src/wire/return-path.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import { postcopyStream } from '../inspect/streams.js';

const dir = mkdtempSync(join(tmpdir(), 'proxy-test-'));
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A destination: records what it receives, hands out its sockets. */
async function target(kind: 'tcp' | 'unix'): Promise<{ uri: string; sockets: net.Socket[]; received: Buffer[]; next: Promise<net.Socket> }> {
  const sockets: net.Socket[] = [];
  const received: Buffer[] = [];
  let resolveNext!: (s: net.Socket) => void;
  const next = new Promise<net.Socket>((r) => (resolveNext = r));
  const server = net.createServer((s) => {
    sockets.push(s);
    s.on('data', (d: Buffer) => received.push(d));
    s.on('error', () => undefined);
    resolveNext(s);
  });
  const path = join(dir, `t-${Math.random().toString(36).slice(2)}.sock`);
  await new Promise<void>((r) => (kind === 'tcp' ? server.listen(0, '127.0.0.1', r) : server.listen(path, r)));
  cleanups.push(() => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))));
  const a = server.address();
  const uri = kind === 'tcp' && a && typeof a === 'object' ? `tcp:127.0.0.1:${a.port}` : `unix:${path}`;
  return { uri, sockets, received, next };
}

async function proxy(opts: Omit<FaultProxyOptions, 'listen'> & { listen?: string }, kind: 'tcp' | 'unix' = 'tcp'): Promise<FaultProxy> {
  const listen = opts.listen ?? (kind === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, `p-${Math.random().toString(36).slice(2)}.sock`)}`);
  const p = new FaultProxy({ ...opts, listen });
  await p.listen();
  cleanups.push(() => p.close());
  return p;
}

function connectTo(uri: string): Promise<net.Socket> {
  const opts = uri.startsWith('tcp:') ? { host: '127.0.0.1', port: Number(uri.split(':')[2]) } : { path: uri.slice(5) };
  return new Promise((resolve, reject) => {
    const s = net.connect(opts, () => resolve(s));
    s.once('error', reject);
  });
}

/** Write `data` in random-sized chunks with random pauses. */
async function writeRandomly(s: net.Socket, data: Uint8Array): Promise<void> {
  for (let i = 0; i < data.length; ) {
    const n = 1 + Math.floor(Math.random() * 20000);
    s.write(data.subarray(i, i + n));
    i += n;
    if (Math.random() < 0.2) await new Promise((r) => setTimeout(r, 1));
  }
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const t = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > t) throw new Error('timeout');
    await new Promise((r) => setTimeout(r, 5));
  }
};
const total = (b: Buffer[]): Buffer => Buffer.concat(b);

describe('relay', () => {
  it.each(['tcp', 'unix'] as const)('%s: byte-identical in both directions with random chunking (decoder errors do not matter)', async (kind) => {
    const t = await target(kind);
    const p = await proxy({ target: t.uri }, kind);
    const decodeErrors: Error[] = [];
    p.on('decode-error', (e) => decodeErrors.push(e));
    const c = await connectTo(p.uri);
    const back: Buffer[] = [];
    c.on('data', (d: Buffer) => back.push(d));
    const up = randomBytes(3 << 20);
    const down = randomBytes(1 << 20);
    const srv = await t.next;
    await Promise.all([writeRandomly(c, up), writeRandomly(srv, down)]);
    await until(() => total(t.received).length === up.length && total(back).length === down.length, 20_000);
    expect(Buffer.compare(total(t.received), up)).toBe(0);
    expect(Buffer.compare(total(back), down)).toBe(0);
    // Random bytes are no migration stream: both decoders gave up (each on its own schedule), the relay carried on.
    await until(() => decodeErrors.length >= 2, 5_000).catch(() => undefined);
    expect(decodeErrors.length).toBe(2);
    const q = p.query();
    expect(q.bytes).toEqual({ main: up.length, rp: down.length });
    expect(q.decodeErrors.map((e) => e.dir).sort()).toEqual(['main', 'rp']);
    // FIN is relayed: the client's end reaches the target.
    const ended = new Promise<void>((r) => srv.once('end', r));
    c.end();
    await ended;
  });

  it('a postcopy-preempt connection (first byte 0: a RAM record) is decoded as raw page records to its EOS', async () => {
    const t = await target('tcp');
    const p = await proxy({ target: t.uri });
    const items: ProxyItem[] = [];
    const decodeErrors: Error[] = [];
    p.on('item', (it: ProxyItem) => items.push(it));
    p.on('decode-error', (e: Error) => decodeErrors.push(e));
    const w = new ByteWriter();
    const enc = new RamRecordEncoder();
    enc.page(w, 'pc.ram', 0x3000, new Uint8Array(4096).fill(7));
    enc.zero(w, 'pc.ram', 0x5000);
    enc.page(w, 'pc.ram', 0x1000, new Uint8Array(4096).fill(9));
    enc.eos(w);
    const bytes = w.toBytes();
    const c = await connectTo(p.uri);
    await writeRandomly(c, bytes);
    await until(() => total(t.received).length === bytes.length && items.length === 4);
    expect(Buffer.compare(total(t.received), Buffer.from(bytes))).toBe(0);
    expect(decodeErrors).toEqual([]);
    expect(items.map((i) => [i.kind, i.fields['block'], i.fields['offset'], i.fields['preempt']])).toEqual([
      ['PAGE', 'pc.ram', 0x3000, true],
      ['ZERO', 'pc.ram', 0x5000, true],
      ['PAGE', 'pc.ram', 0x1000, true],
      ['EOS', undefined, undefined, true],
    ]);
    expect(items.map((i) => i.at)).toEqual([0, 8 + 7 + 4096, 8 + 7 + 4096 + 9, 8 + 7 + 4096 + 9 + 8 + 4096]);
    c.destroy();
  });

  it('--cut-on preempt:KIND[:N] cuts a preempt connection at its Nth record; other rules never match there', async () => {
    expect(parseCutOn('preempt:page:2')).toEqual({ type: 'kind', kind: 'PAGE', nth: 2, dir: 'main', preempt: true });
    expect(() => parseCutOn('preempt:PING')).toThrow('a preempt connection carries only PAGE, ZERO, EOS');
    const t = await target('tcp');
    const p = await proxy({
      target: t.uri,
      cuts: [
        { trigger: parseCutOn('PAGE'), mode: 'kill' },
        { trigger: parseCutOn('preempt:PAGE:2'), mode: 'kill' },
      ],
    });
    const cuts: ProxyCut[] = [];
    p.on('cut', (c: ProxyCut) => cuts.push(c));
    const w = new ByteWriter();
    const enc = new RamRecordEncoder();
    for (const off of [0x1000, 0x2000, 0x3000]) enc.page(w, 'pc.ram', off, new Uint8Array(4096).fill(off >> 12));
    enc.eos(w);
    const bytes = w.toBytes();
    const c = await connectTo(p.uri);
    c.on('error', () => undefined);
    c.write(bytes);
    await until(() => cuts.length === 1);
    const second = 8 + 7 + 4096 + 8 + 4096;
    await until(() => total(t.received).length === second);
    await new Promise((r) => setTimeout(r, 50));
    // the preempt rule fired, after the 2nd page went through whole; the plain PAGE rule did not
    expect(cuts).toHaveLength(1);
    expect(Buffer.compare(total(t.received), Buffer.from(bytes.subarray(0, second)))).toBe(0);
  });

  it('a real stream goes through unchanged and its items are decoded and counted', async () => {
    const t = await target('tcp');
    const p = await proxy({ target: t.uri });
    const items: ProxyItem[] = [];
    p.on('item', (i) => items.push(i));
    const pongs: number[] = [];
    p.on('PONG', (i) => pongs.push(i.fields['value'] as number));
    const { bytes } = postcopyStream();
    const c = await connectTo(p.uri);
    await writeRandomly(c, bytes);
    const srv = await t.next;
    const w = new ByteWriter();
    for (const v of [1, 2, 3, 4]) encodeRpMessage(w, { kind: 'pong', value: v });
    srv.write(w.toBytes());
    await until(() => items.some((i) => i.kind === 'EOF') && pongs.length === 4 && total(t.received).length === bytes.length);
    expect(Buffer.compare(total(t.received), Buffer.from(bytes))).toBe(0);
    expect(pongs).toEqual([1, 2, 3, 4]);
    const q = p.query();
    expect(q.items.main['PACKAGED']).toBe(1);
    expect(q.items.main['POSTCOPY_RUN']).toBe(1);
    expect(q.items.rp['PONG']).toBe(4);
    expect(q.decodeErrors).toEqual([]);
  });
});

describe('target unreachable', () => {
  it('the incoming connection is closed and connect-error names the target', async () => {
    const p = await proxy({ target: `unix:${join(dir, 'nobody.sock')}` });
    const errs: Error[] = [];
    p.on('connect-error', (e) => errs.push(e));
    const c = await connectTo(p.uri);
    await new Promise<void>((r) => c.once('close', () => r()));
    expect(errs[0]?.message).toMatch(/connection 1: cannot connect to unix:.*nobody\.sock: .*ENOENT/);
    expect(p.query().connections[0]!.state).toBe('closed');
  });
});

describe('cut modes as the peers see them', () => {
  const observe = (s: net.Socket): { what: string[] } => {
    const o = { what: [] as string[] };
    s.on('end', () => o.what.push('FIN'));
    s.on('error', (e: NodeJS.ErrnoException) => o.what.push(e.code ?? e.message));
    return o;
  };
  it.each([
    ['kill', 'FIN'],
    ['reset', 'ECONNRESET'],
    ['blackhole', 'silence'],
  ] as const)('%s → %s on both sides', async (mode, expected) => {
    const t = await target('tcp');
    const p = await proxy({ target: t.uri });
    const c = await connectTo(p.uri);
    const srv = await t.next;
    const oc = observe(c);
    const os = observe(srv);
    c.write('hello');
    await until(() => total(t.received).length === 5);
    const cut = p.cut(mode);
    expect(cut?.mode).toBe(mode);
    if (mode === 'blackhole') {
      // Bytes now vanish in both directions and nobody is told.
      c.write('lost');
      srv.write('lost too');
      await new Promise((r) => setTimeout(r, 300));
      expect(oc.what).toEqual([]);
      expect(os.what).toEqual([]);
      expect(total(t.received).toString()).toBe('hello');
    } else {
      await until(() => oc.what.length > 0 && os.what.length > 0);
      expect(oc.what[0]).toBe(expected);
      expect(os.what[0]).toBe(expected);
    }
    expect(p.query().cuts).toHaveLength(1);
    // The next connection (the recovery channel) is relayed normally.
    const c2 = await connectTo(p.uri);
    c2.write('again');
    await until(() => total(t.received).toString().endsWith('again'));
    expect(p.query().connections.map((x) => x.state)).toEqual([mode === 'blackhole' ? 'cut' : expect.stringMatching(/cut|closed/), 'open']);
  });
});

describe('cuts at exact points', () => {
  async function runCut(spec: Parameters<typeof parseCutOn>[0] | number, position?: 'before' | 'after', mode: 'kill' | 'reset' = 'kill', trickle: false | 'fast' | 'slow' = false) {
    const t = await target('tcp');
    const trigger = typeof spec === 'number' ? { type: 'bytes' as const, bytes: spec } : parseCutOn(spec);
    const p = await proxy({ target: t.uri, cuts: [{ trigger, mode, ...(position ? { position } : {}) }] });
    const items: ProxyItem[] = [];
    p.on('item', (i) => items.push(i));
    const cuts: ProxyCut[] = [];
    p.on('cut', (c) => cuts.push(c));
    const { bytes } = postcopyStream();
    const c = await connectTo(p.uri);
    c.setNoDelay(true);
    c.on('error', () => undefined);
    const back: Buffer[] = [];
    c.on('data', (d: Buffer) => back.push(d));
    const srv = await t.next;
    const w = new ByteWriter();
    for (let k = 0; k < 6; k++) encodeRpMessage(w, { kind: 'reqPages', start: k * 4096, length: 4096 });
    const rp = w.toBytes();
    srv.write(rp);
    if (trickle) {
      // Small chunks with pauses: items (the package, pages) span many reads.
      for (let i = 0; i < bytes.length && cuts.length === 0; ) {
        const n = 1 + Math.floor(Math.random() * 60);
        c.write(bytes.subarray(i, i + n));
        i += n;
        if (trickle === 'slow' || Math.random() < 0.3) await new Promise((r) => setTimeout(r, trickle === 'slow' ? 3 : 1));
      }
    } else c.write(bytes);
    await until(() => cuts.length === 1);
    await new Promise((r) => setTimeout(r, 100));
    // The decoders stop at the cut without reporting the truncated item as an error.
    expect(p.query().decodeErrors).toEqual([]);
    return { bytes, rp, items, cut: cuts[0]!, received: total(t.received), back: total(back) };
  }

  it.each(['kill', 'reset'] as const)('--cut-after BYTES (%s): the destination gets exactly BYTES bytes', async (mode) => {
    const r = await runCut(1234, undefined, mode);
    expect(r.received.length).toBe(1234);
    expect(Buffer.compare(r.received, Buffer.from(r.bytes.subarray(0, 1234)))).toBe(0);
    expect(r.cut.reason).toBe('bytes');
  });

  it('PING:2 (inside the package) cuts right after that item; the 1st PING does not trigger', async () => {
    const r = await runCut('PING:2');
    const pings = r.items.filter((i) => i.kind === 'PING');
    expect(pings[1]!.fields).toMatchObject({ value: 3, packaged: true });
    expect(r.cut.item?.at).toBe(pings[1]!.at);
    expect(r.received.length).toBe(pings[1]!.end);
    expect(r.cut.late).toBe(0);
  });

  it('position before: POSTCOPY_RUN never reaches the destination', async () => {
    const r = await runCut('POSTCOPY_RUN', 'before');
    const run = r.items.find((i) => i.kind === 'POSTCOPY_RUN')!;
    expect(r.received.length).toBe(run.at);
  });

  it.each([
    ['POSTCOPY_LISTEN', 'before'],
    ['POSTCOPY_LISTEN', 'after'],
    ['PAGE:3', 'before'],
    ['FULL', 'after'],
    ['PACKAGED', 'after'],
  ] as const)('exact even when items span many small reads: %s %s', async (kind, position) => {
    const r = await runCut(kind, position, 'kill', 'fast');
    const item = r.cut.item!;
    expect(r.cut.late).toBe(0);
    expect(r.received.length).toBe(position === 'before' ? item.at : item.end);
    expect(Buffer.compare(r.received, Buffer.from(r.bytes.subarray(0, r.received.length)))).toBe(0);
  });

  it('exact when the stream trickles in for longer than the hold time (bytes keep moving: no forced release)', async () => {
    const t0 = performance.now();
    const r = await runCut('PAGE:3', 'before', 'kill', 'slow');
    expect(performance.now() - t0).toBeGreaterThan(400); // well past HOLD_MS (200 ms) of trickle
    expect(r.cut.late).toBe(0);
    expect(r.received.length).toBe(r.cut.item!.at);
  });

  it('in-package cuts in the middle of the PACKAGED blob', async () => {
    const r = await runCut('in-package');
    const pkg = r.items.find((i) => i.kind === 'PACKAGED')!;
    expect(r.received.length).toBe(pkg.end + Math.floor((pkg.fields['length'] as number) / 2));
  });

  it('rp:REQ_PAGES:3 lets exactly three requests through to the source', async () => {
    const r = await runCut('rp:REQ_PAGES:3');
    expect(r.back.length).toBe(3 * 16);
    expect(Buffer.compare(r.back, Buffer.from(r.rp.subarray(0, 48)))).toBe(0);
    expect(r.cut.item?.fields['start']).toBe(2 * 4096);
  });

  it('--repeat: a rule cuts N connections, then relays', async () => {
    const t = await target('tcp');
    const p = await proxy({ target: t.uri, cuts: [{ trigger: { type: 'bytes', bytes: 3 }, mode: 'kill', repeat: 2 }] });
    for (const expected of [3, 6, 11]) {
      const c = await connectTo(p.uri);
      c.on('error', () => undefined);
      c.write('hello');
      await until(() => total(t.received).length === expected);
    }
    expect(p.query().cuts.map((c) => c.conn)).toEqual([1, 2]);
  });
});

describe('record file', () => {
  it('round trip: every decoded item and the cut, readable and printable', async () => {
    const t = await target('unix');
    const file = join(dir, 'rec.mpk');
    const p = new FaultProxy({ listen: `unix:${join(dir, 'rec.sock')}`, target: t.uri, record: file, cuts: [{ trigger: parseCutOn('EOF'), mode: 'reset' }] });
    await p.listen();
    const items: ProxyItem[] = [];
    p.on('item', (i) => items.push(i));
    const c = await connectTo(p.uri);
    c.on('error', () => undefined);
    c.write(postcopyStream().bytes);
    await until(() => p.query().cuts.length === 1);
    await p.close();
    const recs = readRecordFile(file);
    expect(recs[0]!.kind).toBe('PROXY_RECORD');
    const decoded = recs.filter((r) => r.dir !== 'proxy');
    expect(decoded.map((r) => r.kind)).toEqual(items.map((i) => i.kind));
    expect(decoded.every((r) => r.conn === 1 && typeof r.t === 'number')).toBe(true);
    expect(recs.map((r) => r.kind)).toContain('CUT');
    const text = formatRecords(recs);
    expect(text).toMatch(/#1 main  PACKAGED length=\d+/);
    expect(text).toMatch(/#1 proxy CUT mode="reset" reason="kind:EOF:1"/);
    expect(text).toContain('conn 1 main PAGE: 3');
    expect(text).not.toMatch(/ PAGE block=/); // page records only counted unless asked
    expect(formatRecords(recs, { pages: true })).toMatch(/ PAGE block="ram" offset=0 continued=false/);
  });
});
