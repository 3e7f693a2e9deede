/**
 * Fault latency of the source in postcopy over loopback TCP with an
 * unthrottled background scan: a scripted destination requests a missing
 * page every few ms; each must arrive quickly (the sender yields every
 * ~1 ms and serves a request at the next page). The event-loop gap is only
 * reported here: the in-process destination parses whole buffered batches in
 * one go (tens of ms); postcopy-qemu.interop.test.ts asserts the source's own
 * gaps with QEMU as the destination.
 */
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { fillRandom, TestGuest } from '../engine/helpers.js';
import { ScriptedDestination } from './scripted-destination.js';

const MiB = 1 << 20;

async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const a = net.connect(port, '127.0.0.1');
  await new Promise((r) => a.once('connect', r));
  const b = await accepted;
  server.close();
  return [a, b];
}

describe('postcopy fault latency (loopback TCP, unthrottled scan)', () => {
  it('requested pages arrive within a few ms while 64 MiB stream in the background', async () => {
    const size = 64 * MiB;
    const g = new TestGuest([{ idstr: 'ram', size }]);
    fillRandom(g.blocks[0]!.bytes, 17);
    const src = new MigrationSource(g, { capabilities: { postcopyRam: true }, parameters: { maxBandwidth: 64 * MiB, downtimeLimit: 1 } });
    const [a, b] = await socketPair();
    const pending = new Map<number, number>();
    const lat: number[] = [];
    let timer: NodeJS.Timeout | undefined;
    const dest = new ScriptedDestination(size, {
      onListen: (d) => {
        let k = 0;
        timer = setInterval(() => {
          const miss = d.missing();
          if (miss.length < 64) return;
          // far from the scan: the last missing pages, one new request each tick
          const p = miss[miss.length - 1 - (k++ % 32) * 2]!;
          if (pending.has(p)) return;
          pending.set(p, performance.now());
          d.send({ kind: 'reqPagesId', start: p * 4096, length: 4096, blockName: 'ram' });
        }, 3);
      },
      onPage: (_d, p) => {
        const t = pending.get(p.page);
        if (t !== undefined) {
          lat.push(p.at - t);
          pending.delete(p.page);
        }
      },
    });
    const h = monitorEventLoopDelay({ resolution: 1 });
    dest.afterPrecopyPages(100, () => src.startPostcopy());
    const run = src.migrate(a);
    const served = dest.serve(b);
    await new Promise<void>((r) => src.once('switchover', () => r()));
    h.enable();
    expect(await run).toBe('completed');
    h.disable();
    clearInterval(timer);
    expect(await served).toBe('eof');
    expect(dest.duplicates).toEqual([]);
    expect(Buffer.compare(Buffer.from(dest.ram), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    lat.sort((x, y) => x - y);
    expect(lat.length).toBeGreaterThan(10);
    const p50 = lat[Math.floor(lat.length / 2)]!;
    const p99 = lat[Math.floor(lat.length * 0.99)]!;
    const maxGap = h.max / 1e6;
    console.log(`postcopy faults over TCP: n=${lat.length} p50 ${p50.toFixed(2)} ms p99 ${p99.toFixed(2)} ms max ${lat.at(-1)!.toFixed(2)} ms; event-loop max gap ${maxGap.toFixed(1)} ms`);
    expect(p50).toBeLessThan(30); // typically 4-7 ms alone; shared CPUs
    a.destroy();
    b.destroy();
  });
});
