/**
 * The demo's closing summary: times, downtime, bytes, pages by kind,
 * postcopy requests and faults with their latency, the recovery's timings,
 * the status sequences, and the RAM check that decides the exit code.
 */
import type { FaultProxy, ProxyCut } from '../../proxy/proxy.js';
import type { DemoOptions, DemoPacing } from './options.js';
import { micros, size, type MigrateInfo, type WorkloadInfo } from './report.js';
import type { DemoVm, Timeline } from './vms.js';

/** What the story recorded on its way (times are on the timeline, in ms). */
export interface StoryFacts {
  o: DemoOptions;
  pace: DemoPacing;
  timeline: Timeline;
  proxy?: FaultProxy;
  poller?: { xbzrle: MigrateInfo['xbzrle-cache'] };
  tMigrate?: number;
  tCut?: number;
  /** REQ_PAGES / REQ_PAGES_ID the proxy relayed on the migration connection (before the cut). */
  requestsBeforeCut?: number;
  tRecover?: number;
  cut?: ProxyCut;
}

interface Digest {
  blocks: { idstr: string; usedLength: number; sha256: string }[];
}

const secs = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

/** Prints the summary and the verification line; resolves to the exit code. */
export async function printSummary(src: DemoVm, dst: DemoVm, f: StoryFacts, line: (s: string) => void): Promise<number> {
  const tl = f.timeline;
  const [s, d, w] = await Promise.all([
    src.qmp.execute<MigrateInfo>('query-migrate'),
    dst.qmp.execute<MigrateInfo>('query-migrate'),
    dst.qmp.execute<WorkloadInfo>('x-query-workload'),
  ]);
  const row = (name: string, text: string): void => line(`  ${name.padEnd(20)} ${text}`);
  line('summary');
  if (s.status !== 'completed' || d.status !== 'completed') {
    row('status', `source ${s.status} ${s['error-desc'] ?? ''}, destination ${d.status} ${d['error-desc'] ?? ''}`);
  }
  const r = s.ram;
  const pcActive = tl.find('source', 'postcopy-active');
  const done = tl.find('source', 'completed');
  let times = `${secs(s['total-time'] ?? 0)} (setup ${s['setup-time'] ?? 0} ms)`;
  if (pcActive && done && f.tMigrate !== undefined) {
    times += `: precopy ${secs(pcActive.t - f.tMigrate)}, postcopy ${secs(done.t - pcActive.t)}`;
    const paused = tl.find('source', 'postcopy-paused');
    const back = tl.find('source', 'postcopy-active', 2);
    if (paused && back) times += ` of which paused ${secs(back.t - paused.t)}`;
  }
  row('total time', times);
  const stop = tl.find('source', 'STOP');
  const resume = tl.find('destination', 'RESUME');
  let down = `${s.downtime ?? '?'} ms as the source measures it (QEMU's: stop → ${pcActive ? 'switchover package sent' : 'completed'})`;
  if (stop && resume) down += `; guest not running on either side for ${Math.round(resume.t - stop.t)} ms (source STOP → destination RESUME)`;
  row('downtime', down);
  if (r) {
    let t = `${size(r.transferred)} for ${size(r.total)} of RAM in ${r['dirty-sync-count']} passes`;
    if (pcActive) t += `: precopy ${size(r['precopy-bytes'] ?? 0)}, at the switchover ${size(r['downtime-bytes'] ?? 0)}, postcopy ${size(r['postcopy-bytes'] ?? 0)}`;
    row('transferred', t);
    const x = s['xbzrle-cache'] ?? f.poller?.xbzrle;
    let pages = `${r.normal} normal, ${r.duplicate} zero`;
    if (x && x.pages > 0) pages += `, ${x.pages} XBZRLE (${size(x.bytes)} encoded, ${x['cache-miss']} cache misses)`;
    else if (x) pages += `; XBZRLE: 0 pages encoded (${x['cache-miss']} cache misses)`;
    row('pages', pages);
  }
  if (pcActive) {
    row('postcopy', `${r?.['postcopy-requests'] ?? 0} page requests served by the source; destination guest: ${w.faults} faults, blocked ${w['blocked-ms']} ms in all, at most ${w['max-blocked-ms']} ms at once`);
    const lat = d['x-postcopy-fault-latency'];
    if (lat) {
      let t = `p50 ${micros(lat['p50-us'])}, p99 ${micros(lat['p99-us'])}, max ${micros(lat['max-us'])} over ${lat.count} faults`;
      if (d['postcopy-blocktime'] !== undefined) t += `; postcopy-blocktime ${d['postcopy-blocktime']} ms`;
      const paused = pausedSpan(f);
      if (paused !== undefined && lat['max-us'] / 1000 >= paused / 2) t += ' (the max is a fault that waited out the cut)';
      row('fault latency', t);
    } else row('fault latency', 'no fault reported by the destination');
  }
  recovery(f, row);
  if (f.proxy) {
    const q = f.proxy.query();
    const conns = q.connections.map((c, i) => {
      const cut = q.cuts.find((x) => x.conn === c.conn);
      const name = i === 0 ? 'migration' : 'recovery';
      return `${name} connection ${size(c.bytes.main)} → ${size(c.bytes.rp)} ←${cut ? `, then cut (${cut.mode})` : ''}`;
    });
    if (q.decodeErrors.length) conns.push(`${q.decodeErrors.length} decode errors, first: ${q.decodeErrors[0]!.message}`);
    row('proxy', conns.join('; '));
  }
  for (const side of ['source', 'destination'] as const) {
    row(`${side} statuses`, tl.sequence(side).filter((x) => x !== 'STOP' && x !== 'RESUME').join(' → '));
  }
  const [ss, ds] = await Promise.all([src.qmp.execute<{ status: string }>('query-status'), dst.qmp.execute<{ status: string }>('query-status')]);
  row('run states', `source ${ss.status}, destination ${ds.status}`);

  // The source stopped at the switchover (or at the end of precopy) and has not run since: its RAM now
  // is its RAM at stop time. The destination's guest only reads.
  const [sd, dd] = await Promise.all([src.qmp.execute<Digest>('x-ram-digest'), dst.qmp.execute<Digest>('x-ram-digest')]);
  const same = sd.blocks.length > 0 && JSON.stringify(sd.blocks) === JSON.stringify(dd.blocks);
  const ok = same && s.status === 'completed' && d.status === 'completed';
  const h = (x: Digest): string => x.blocks.map((b) => `${b.idstr} ${b.sha256.slice(0, 16)}…`).join(', ') || 'no RAM';
  line(
    same
      ? `verify: RAM identical — destination ${h(dd)} = source ${h(sd)} (the source's RAM as it stopped${pcActive ? ' at the switchover' : ''})`
      : `verify: RAM DIFFERS — destination ${h(dd)}, source ${h(sd)}`,
  );
  return ok ? 0 : 1;
}

/** ms from the source's postcopy-paused to its postcopy-active again, if it happened. */
function pausedSpan(f: StoryFacts): number | undefined {
  const p = f.timeline.find('source', 'postcopy-paused');
  const a = f.timeline.find('source', 'postcopy-active', 2);
  return p && a ? a.t - p.t : undefined;
}

function recovery(f: StoryFacts, row: (name: string, text: string) => void): void {
  const tl = f.timeline;
  if (f.tCut === undefined) return;
  const sp = tl.find('source', 'postcopy-paused');
  const dp = tl.find('destination', 'postcopy-paused');
  const sa = tl.find('source', 'postcopy-active', 2);
  const da = tl.find('destination', 'postcopy-active', 2);
  if (!sp || !dp || !sa || !da || f.tRecover === undefined) {
    row('recovery', 'incomplete');
    return;
  }
  const ms = (x: number): string => `${Math.round(x)} ms`;
  const active = Math.max(sa.t, da.t);
  row(
    'recovery',
    `cut → paused: source ${ms(sp.t - f.tCut)}, destination ${ms(dp.t - f.tCut)}; ` +
      `migrate-recover → both postcopy-active ${ms(active - f.tRecover)}; cut → active again ${ms(active - f.tCut)} ` +
      `(${ms(f.pace.pausedMs)} of it the demo watching the pause)`,
  );
}
