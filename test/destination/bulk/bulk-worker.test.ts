/**
 * The destination's bulk worker (src/destination/bulk/) in a real migration:
 * our source → our destination over loopback TCP, postcopy with a slow
 * background so that the worker reads the main channel for a long time.
 * Faults are served while it reads, a reset of the link during a worker run
 * pauses both sides without losing a page, recovery over a new connection
 * gives the new channel to the worker again, and the RAM is equal at the
 * end. With `bulkWorker: false` the same migration is read on the main
 * thread.
 */
import net from 'node:net';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../../src/source/source.js';
import { MigrationDestination } from '../../../src/destination/destination.js';
import { nativeOs } from '../../../src/native.js';
import { fillRandom, TestGuest } from '../../engine/helpers.js';
import { until } from '../postcopy-script.js';

const MiB = 1 << 20;
const TP = 4096;
const SIZE = 16 * MiB;
const PAGES = SIZE / TP;

async function tcpPair(): Promise<{ client: net.Socket; server: net.Socket }> {
  const srv = net.createServer({ noDelay: true });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const accepted = once(srv, 'connection');
  const client = net.connect({ port: (srv.address() as net.AddressInfo).port, host: '127.0.0.1', noDelay: true });
  await once(client, 'connect');
  const [server] = (await accepted) as [net.Socket];
  srv.close();
  return { client, server };
}

function setup(bulkWorker: boolean) {
  const g = new TestGuest([{ idstr: 'ram', size: SIZE }]);
  fillRandom(g.blocks[0]!.bytes, 23);
  g.blocks[0]!.bytes.fill(0, 0, 256 * TP); // zero pages too
  const src = new MigrationSource(g, {
    capabilities: { postcopyRam: true },
    // precopy sends little before the switch; the background after it is slow (the worker reads for seconds)
    parameters: { maxBandwidth: 4 * MiB, maxPostcopyBandwidth: 6 * MiB, downtimeLimit: 1 },
  });
  // no blocks given: the destination allocates shared RAM, which the worker can write
  const dst = new MigrationDestination({ postcopyRam: true, adopt: true, bulkWorker });
  const want = (p: number): Buffer => Buffer.from(g.blocks[0]!.bytes.subarray(p * TP, (p + 1) * TP));
  const readOk = async (p: number): Promise<boolean> => Buffer.from(await dst.read('ram', p * TP, TP)).equals(want(p));
  return { g, src, dst, readOk };
}

describe.skipIf(!nativeOs())('the bulk worker reads the postcopy background stream', () => {
  it('faults served while it reads; a reset mid-run pauses both sides; recovered; RAM equal', async () => {
    const { g, src, dst, readOk } = setup(true);
    const first = await tcpPair();
    const run = src.migrate(first.client);
    const load = dst.load(first.server);
    await new Promise((r) => setTimeout(r, 150));
    src.startPostcopy();
    await once(dst, 'postcopyRun');
    await until(() => (dst.bulkStats?.bytesRead ?? 0) > 256 * 1024, 5000);
    let bad = 0;
    for (let i = 0; i < 30; i++) if (!(await readOk((i * 7919 + 5) % PAGES))) bad++;
    const s1 = dst.bulkStats!;
    expect(s1.bytesRead).toBeGreaterThan(256 * 1024);
    expect(dst.isReceived('ram', (PAGES - 1) * TP)).toBe(false); // the background is far from done

    // RST while the worker reads: both pause
    first.client.resetAndDestroy();
    await until(() => dst.status === 'postcopy-paused' && src.status === 'postcopy-paused', 5000);
    const runsAtPause = dst.bulkStats!.runs;
    expect(runsAtPause).toBeGreaterThanOrEqual(1);
    const placedAtPause = dst.bulkStats!.normal + dst.bulkStats!.zero;
    expect(placedAtPause).toBeGreaterThan(0);
    const missing: number[] = [];
    for (let p = PAGES - 1; missing.length < 3; p -= 53) if (!dst.isReceived('ram', p * TP)) missing.push(p);
    const waits = missing.map(readOk);

    const second = await tcpPair();
    const recovered = dst.recover(second.server);
    await src.resume(second.client);
    await recovered;
    expect((await Promise.all(waits)).every(Boolean)).toBe(true);
    await until(() => dst.bulkStats!.bytesRead > s1.bytesRead + 256 * 1024, 5000);
    src.setParameters({ maxPostcopyBandwidth: 0 });
    for (let i = 0; i < 30; i++) if (!(await readOk((i * 104729 + 11) % PAGES))) bad++;
    expect(await load).toBe('completed');
    expect(await run).toBe('completed');
    expect(bad).toBe(0);
    expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    const st = dst.bulkStats!;
    // the new connection was read by the worker too, and it placed most of the background
    expect(st.runs).toBeGreaterThan(runsAtPause);
    expect(st.normal + st.zero).toBeGreaterThan(placedAtPause);
    expect(st.normal + st.zero).toBeGreaterThan(PAGES / 2);
    // the main thread's counters include the worker's pages
    const c = dst.pageCounts;
    expect(c.normal).toBeGreaterThanOrEqual(st.normal);
    expect(c.zero).toBeGreaterThanOrEqual(st.zero);
    first.server.destroy();
    second.client.destroy();
    second.server.destroy();
  }, 60_000);

  it('bulkWorker: false reads everything on the main thread', async () => {
    const { g, src, dst, readOk } = setup(false);
    src.setParameters({ maxPostcopyBandwidth: 0 });
    const { client, server } = await tcpPair();
    const run = src.migrate(client);
    const load = dst.load(server);
    await new Promise((r) => setTimeout(r, 100));
    src.startPostcopy();
    await once(dst, 'postcopyRun');
    expect(await readOk(PAGES - 7)).toBe(true);
    expect(await load).toBe('completed');
    expect(await run).toBe('completed');
    expect(dst.bulkStats).toBeUndefined();
    expect(Buffer.compare(Buffer.from(dst.blocks[0]!.bytes), Buffer.from(g.blocks[0]!.bytes))).toBe(0);
    client.destroy();
    server.destroy();
  }, 60_000);
});
