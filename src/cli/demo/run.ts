/**
 * runDemo: the story of `postcopy demo` (see DEMO_HELP) — two `postcopy vm`
 * processes, a FaultProxy between them (in this process), precopy, the
 * switchover to postcopy, a cut, the recovery, completion, a summary and
 * the RAM check. Everything it reports comes from the VMs' QMP replies and
 * events and from the proxy's counters.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FaultProxy, type ProxyCut } from '../../proxy/proxy.js';
import type { ProxyItem } from '../../proxy/decoder.js';
import { DESTINATION_WORKLOAD, demoPacing, type DemoOptions, type DemoPacing } from './options.js';
import { Reporter, describeEntry, progressLine, size, storyLine, type MigrateInfo, type WorkloadInfo } from './report.js';
import { Timeline, startVm, writeGuestImage, type DemoVm } from './vms.js';
import { printSummary, type StoryFacts } from './summary.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Page requests the destination's guest must have made before the cut (waited for at most 5 s). */
const MIN_REQUESTS_BEFORE_CUT = 10;

/** Items of the recovery handshake the proxy decodes on the new connection. */
const HANDSHAKE_KINDS = new Set(['RECV_BITMAP', 'RECV_BITMAP_DATA', 'POSTCOPY_RESUME', 'RESUME_ACK']);

/** Polls the source's query-migrate (and the destination's workload in postcopy) and draws the progress line. */
class ProgressPoller {
  last: MigrateInfo = {};
  xbzrle: MigrateInfo['xbzrle-cache'];
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(src: DemoVm, dst: DemoVm, rep: Reporter) {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          const info = await src.qmp.execute<MigrateInfo>('query-migrate');
          if (this.stopped) break;
          this.last = info;
          if (info['xbzrle-cache']) this.xbzrle = info['xbzrle-cache'];
          const w = info.status?.startsWith('postcopy') ? await dst.qmp.execute<WorkloadInfo>('x-query-workload') : undefined;
          if (!this.stopped && info.ram) rep.progress(progressLine(info, w));
        } catch {
          /* a VM went away: the story's own waits report it */
        }
        await sleep(100);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

/** Waits until the source's XBZRLE has encoded pages (or xbzrleWaitMs went by, said so). */
async function waitForXbzrle(run: Run, tl: Timeline): Promise<void> {
  const end = performance.now() + run.pace.xbzrleWaitMs;
  while (!tl.find('source', 'completed')) {
    const pages = run.poller?.xbzrle?.pages ?? 0;
    if (pages > 0) return;
    if (performance.now() > end) {
      run.say('demo', `XBZRLE has encoded no page after ${(run.pace.precopyMs + run.pace.xbzrleWaitMs) / 1000} s: switching anyway`);
      return;
    }
    await sleep(100);
  }
}

/** What the phases of one run share. */
interface Run {
  o: DemoOptions;
  pace: DemoPacing;
  /** Scratch directory: the guest image and the QMP sockets. */
  dir: string;
  rep: Reporter;
  tl: Timeline;
  /** Started VMs (stopped at the end whatever happens). */
  vms: DemoVm[];
  proxy?: FaultProxy;
  poller?: ProgressPoller;
  facts: StoryFacts;
  /** A story line at the current time. */
  say(who: string, text: string): void;
}

/** Runs the demo; resolves to the exit code (0 only if the RAM check passed). Story on `out`, progress on stderr. */
export async function runDemo(o: DemoOptions, out: (line: string) => void = (s) => process.stdout.write(s + '\n')): Promise<number> {
  const rep = new Reporter(out);
  const tl = new Timeline((e) => rep.line(storyLine(e.t, e.side, describeEntry(e))));
  const pace = demoPacing(o);
  const run: Run = {
    o,
    pace,
    dir: fs.mkdtempSync(path.join(os.tmpdir(), 'postcopy-demo-')),
    rep,
    tl,
    vms: [],
    facts: { o, pace, timeline: tl },
    say: (who, text) => rep.line(storyLine(tl.now(), who, text)),
  };
  // Ctrl-C: no VM left behind, no scratch image left in the temporary directory.
  const onSigint = (): void => {
    for (const vm of run.vms) vm.child.kill('SIGKILL');
    fs.rmSync(run.dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSigint);
  try {
    return await story(run);
  } catch (e) {
    rep.line(`demo failed: ${e instanceof Error ? e.message : String(e)}`);
    for (const vm of run.vms) {
      const info = await vm.qmp.execute<MigrateInfo>('query-migrate', undefined, { timeoutMs: 1000 }).catch(() => undefined);
      if (info?.['error-desc']) rep.line(`  ${vm.side} query-migrate: ${info.status}: ${info['error-desc']}`);
      const err = vm.stderr().trim();
      if (err) rep.line(`  ${vm.side} stderr: ${err.split('\n').slice(-5).join(' | ')}`);
    }
    return 1;
  } finally {
    process.off('SIGINT', onSigint);
    await run.poller?.stop();
    rep.clearProgress();
    await run.proxy?.close().catch(() => undefined);
    await Promise.all(run.vms.map(stopVm));
    fs.rmSync(run.dir, { recursive: true, force: true });
  }
}

/** Ends a VM: quit for the destination; the source is killed (at quit it would write its RAM back to the scratch image). */
async function stopVm(vm: DemoVm): Promise<void> {
  if (vm.side === 'destination') await vm.qmp.execute('quit', {}, { timeoutMs: 2000 }).catch(() => undefined);
  await vm.qmp.close().catch(() => undefined);
  if (vm.side === 'source') vm.child.kill('SIGKILL');
  const exited = (): boolean => vm.child.exitCode !== null || vm.child.signalCode !== null;
  if (!exited()) await Promise.race([new Promise((r) => vm.child.once('exit', r)), sleep(2000)]);
  if (!exited()) vm.child.kill('SIGKILL');
}

async function story(run: Run): Promise<number> {
  const { o, pace, dir, rep, tl, vms, facts, say } = run;

  // ---- two VMs and the link between them
  const image = path.join(dir, 'guest.ram');
  const dataBytes = writeGuestImage(image, o.ramMiB);
  const ram = `${o.ramMiB}M`;
  // Both VMs start at once (each is a Node process loading the WASM hot path); a failed start is reported, the other still cleaned up.
  const started = await Promise.allSettled([
    startVm(dir, 'source', ['--machine', 'none', '--ram', ram, '--mem-path', image, '--workload', o.workload]),
    startVm(dir, 'destination', ['--machine', 'none', '--ram', ram, '--incoming', 'defer', '--workload', DESTINATION_WORKLOAD]),
  ]);
  for (const r of started) if (r.status === 'fulfilled') vms.push(r.value);
  for (const r of started) if (r.status === 'rejected') throw r.reason;
  const [src, dst] = vms as [DemoVm, DemoVm];
  const cap = (capability: string, state: boolean): { capability: string; state: boolean } => ({ capability, state });
  await src.qmp.execute('migrate-set-capabilities', {
    capabilities: [cap('xbzrle', o.xbzrle), cap('events', true), cap('return-path', true), cap('postcopy-ram', o.postcopy)],
  });
  await dst.qmp.execute('migrate-set-capabilities', {
    capabilities: [cap('events', true), cap('postcopy-ram', o.postcopy), cap('postcopy-blocktime', o.postcopy)],
  });
  await src.qmp.execute('migrate-set-parameters', {
    'max-bandwidth': pace.precopyBandwidth,
    'max-postcopy-bandwidth': pace.postcopyBandwidth,
    'downtime-limit': pace.downtimeLimitMs,
    'xbzrle-cache-size': pace.xbzrleCacheSize,
  });
  rep.line(`postcopy demo: ${o.ramMiB} MiB guest (${size(dataBytes)} of random data, the rest zero pages)`);
  rep.line(`  source       postcopy vm --ram ${ram} --workload ${o.workload}`);
  rep.line(`  destination  postcopy vm --ram ${ram} --incoming defer --workload ${DESTINATION_WORKLOAD}`);
  const plan = [`precopy at ${size(pace.precopyBandwidth)}/s${o.xbzrle ? ' with XBZRLE' : ''}`];
  if (o.postcopy) {
    const when = o.xbzrle ? `once XBZRLE has encoded pages (after ${pace.precopyMs / 1000} s at least)` : `after ${pace.precopyMs / 1000} s`;
    plan.push(`migrate-start-postcopy ${when} (postcopy background at ${size(pace.postcopyBandwidth)}/s)`);
    if (o.cut) plan.push(`cut the link (${o.cutMode}) ${pace.cutAfterMs / 1000} s after the destination's guest starts, recover`);
  }
  plan.push('complete', 'verify RAM');
  rep.line(`  plan         ${plan.join(', ')}`);

  tl.start();
  tl.follow(src);
  tl.follow(dst);
  say('demo', 'migrate-incoming tcp:127.0.0.1:0 (destination)');
  await dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const di = await dst.qmp.execute<{ 'socket-address'?: { port: string }[] }>('query-migrate');
  const port = di['socket-address']?.[0]?.port;
  if (!port) throw new Error('the destination did not report its listening port');
  const dstUri = `tcp:127.0.0.1:${port}`;
  let migrateUri = dstUri;
  let proxy: FaultProxy | undefined;
  if (o.cut) {
    proxy = run.proxy = new FaultProxy({ listen: 'tcp:127.0.0.1:0', target: dstUri });
    migrateUri = await proxy.listen();
    facts.proxy = proxy;
    let firstConn: number | undefined;
    proxy.on('connection', (conn: number) => (firstConn ??= conn));
    proxy.on('item', (it: ProxyItem, conn: number) => {
      if (conn !== firstConn && HANDSHAKE_KINDS.has(it.kind)) say('proxy', describeHandshakeItem(it));
      if (conn === firstConn && (it.kind === 'REQ_PAGES' || it.kind === 'REQ_PAGES_ID')) facts.requestsBeforeCut = (facts.requestsBeforeCut ?? 0) + 1;
    });
    say('proxy', `FaultProxy on ${migrateUri}, relaying to the destination ${dstUri}`);
  }

  await sleep(300); // let the workload dirty some memory first
  facts.tMigrate = tl.now();
  say('demo', `migrate ${migrateUri} (source)`);
  await src.qmp.execute('migrate', { uri: migrateUri });
  const poller = (run.poller = facts.poller = new ProgressPoller(src, dst, rep));
  await tl.wait('source', 'active', 1, pace.phaseTimeoutMs);

  if (o.postcopy) {
    // ---- precopy for a moment, then the switchover
    await Promise.race([sleep(pace.precopyMs), tl.wait('source', 'completed', 1, pace.precopyMs + 1000).catch(() => undefined)]);
    if (o.xbzrle) await waitForXbzrle(run, tl);
    if (tl.find('source', 'completed')) {
      say('demo', 'precopy converged before the switch: no postcopy this time');
    } else {
      say('demo', 'migrate-start-postcopy (source)');
      await src.qmp.execute('migrate-start-postcopy');
      await tl.wait('source', 'postcopy-active', 1, pace.phaseTimeoutMs);
      await tl.wait('destination', 'postcopy-active', 1, pace.phaseTimeoutMs);
      if (proxy) await cutAndRecover(run, src, dst, proxy, dstUri);
    }
  }

  if (!o.postcopy && !(await converged(run, src))) return 1;

  // ---- completion
  await tl.wait('source', 'completed', 1, pace.phaseTimeoutMs * 2);
  await tl.wait('destination', 'completed', 1, pace.phaseTimeoutMs);
  await poller.stop();
  rep.clearProgress();
  return printSummary(src, dst, facts, (s) => rep.line(s));
}

/**
 * Precopy only: waits for completion; if precopy does not converge in time (a guest dirtying
 * memory faster than the link carries it), cancels and says so. True when it completed.
 */
async function converged({ pace, tl, say }: Run, src: DemoVm): Promise<boolean> {
  const done = await tl.wait('source', 'completed', 1, pace.convergeTimeoutMs).then(
    () => true,
    (e: unknown) => {
      if (tl.find('source', 'failed')) throw e;
      return false;
    },
  );
  if (done) return true;
  const info = await src.qmp.execute<MigrateInfo>('query-migrate');
  const r = info.ram;
  say('demo', `precopy has not converged after ${pace.convergeTimeoutMs / 1000} s (pass ${r?.['dirty-sync-count'] ?? '?'}, ${size(r?.remaining ?? 0)} remaining): migrate_cancel — postcopy would finish it (drop --no-postcopy)`);
  await src.qmp.execute('migrate_cancel');
  await tl.wait('source', 'cancelled', 1, pace.phaseTimeoutMs, ['failed']);
  return false;
}

/** The cut, the paused state, migrate-recover + migrate resume=true, back to postcopy-active. */
async function cutAndRecover(run: Run, src: DemoVm, dst: DemoVm, proxy: FaultProxy, dstUri: string): Promise<void> {
  const { o, pace, tl, say, facts } = run;
  // The cut comes once the destination's guest runs and has faulted for a while (page requests went through).
  const running = await tl.wait('destination', 'RESUME', 1, pace.phaseTimeoutMs);
  await sleep(Math.max(0, running.t + pace.cutAfterMs - tl.now()));
  for (let i = 0; i < 50 && (facts.requestsBeforeCut ?? 0) < MIN_REQUESTS_BEFORE_CUT; i++) await sleep(100);
  const st = await src.qmp.execute<MigrateInfo>('query-migrate');
  if (st.status !== 'postcopy-active') {
    say('demo', `postcopy was over before the cut (source ${st.status}): nothing to recover`);
    return;
  }
  const tCut = tl.now();
  const cut: ProxyCut | undefined = proxy.cut(o.cutMode);
  if (!cut) {
    say('demo', 'the migration connection closed before the cut: nothing to recover');
    return;
  }
  facts.tCut = tCut;
  facts.cut = cut;
  say(
    'proxy',
    `cut the link (${o.cutMode === 'reset' ? 'reset: RST' : 'kill: FIN'}) after ${facts.requestsBeforeCut ?? 0} page requests; ` +
      `${size(cut.relayed.main)} → and ${size(cut.relayed.rp)} ← relayed`,
  );
  await tl.wait('source', 'postcopy-paused', 1, pace.phaseTimeoutMs);
  await tl.wait('destination', 'postcopy-paused', 1, pace.phaseTimeoutMs);

  // The destination's guest waits on its missing pages; nothing is lost or failed.
  const w1 = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
  await sleep(pace.pausedMs);
  const w2 = await dst.qmp.execute<WorkloadInfo>('x-query-workload');
  const visits = w2.visits - w1.visits;
  say('demo', `destination guest: ${visits} page visits in ${pace.pausedMs} ms ${visits === 0 ? '(blocked on a missing page)' : '(on pages it already has)'}`);

  facts.tRecover = tl.now();
  say('demo', `migrate-recover ${dstUri} (destination), migrate ${proxy.uri} resume=true (source)`);
  await dst.qmp.execute('migrate-recover', { uri: dstUri });
  await src.qmp.execute('migrate', { uri: proxy.uri, resume: true });
  await tl.wait('source', 'postcopy-active', 2, pace.phaseTimeoutMs);
  await tl.wait('destination', 'postcopy-active', 2, pace.phaseTimeoutMs);
}

/** A decoded recovery-handshake item as one story line. */
function describeHandshakeItem(it: ProxyItem): string {
  const arrow = it.dir === 'main' ? '→' : '←';
  const f = it.fields;
  const block = f['blockName'] ?? f['name'] ?? '';
  if (it.kind === 'RECV_BITMAP_DATA') return `${arrow} ${it.kind} ${String(block)}: ${String(f['setBits'])} pages received (${String(f['size'])} bytes)`;
  return `${arrow} ${it.kind}${block !== '' ? ` ${String(block)}` : ''}`;
}
