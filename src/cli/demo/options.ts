/**
 * Options of `postcopy demo`: the command line, its defaults, and the pacing
 * that makes the story watchable on a small machine (bandwidths scale with
 * the RAM size so every phase lasts about as long at any size).
 */
import { PostcopyError } from '../../errors.js';
import { parseWorkload } from '../../vm/options.js';

const MiB = 1 << 20;

/** What `postcopy demo` runs. */
export interface DemoOptions {
  /** Guest RAM in MiB (one block "ram"). */
  ramMiB: number;
  /** The source guest's workload (`postcopy vm --workload`). */
  workload: string;
  /** XBZRLE during precopy. */
  xbzrle: boolean;
  /** Switch to postcopy after a moment of precopy (off: precopy to completion). */
  postcopy: boolean;
  /** Cut the link during postcopy and recover (needs postcopy). */
  cut: boolean;
  /** How the FaultProxy cuts: kill = FIN, reset = RST. */
  cutMode: 'reset' | 'kill';
}

/**
 * The defaults: `npm start` with no arguments. The workload writes as fast as it can (64 bytes per
 * visit, 90 % of them in a tenth of its 32 MiB): precopy never converges, so the demo decides when
 * to switch, the hot pages are resent often enough for XBZRLE to encode them, and enough is left
 * dirty at the switch for a postcopy phase with a cut in it.
 */
export const DEFAULT_DEMO: Readonly<DemoOptions> = {
  ramMiB: 256,
  workload: 'pattern=hot,rate=0,bytes=64,wss=32M',
  xbzrle: true,
  postcopy: true,
  cut: true,
  cutMode: 'reset',
};

/** The default workload with --no-postcopy: paced (50000 visits/s in 16 MiB) so that precopy can converge. */
export const PRECOPY_DEMO_WORKLOAD = 'pattern=hot,rate=50000,bytes=64,wss=16M';

/**
 * The destination guest's workload: random page reads, each through the
 * fault path while postcopy runs. It only reads, so its RAM can be compared
 * with the source's at the end.
 */
export const DESTINATION_WORKLOAD = 'mode=read,pattern=rand,rate=20000';

/** Smallest RAM the demo accepts (the workload and the pacing need a few MiB). */
export const MIN_RAM_MIB = 8;

/** Timings and rates of one run, derived from the options. */
export interface DemoPacing {
  /**
   * Precopy max-bandwidth (bytes/s): RAM/4, so the first pass (a quarter of RAM is data) takes about a
   * second; precopy only at least 32 MiB/s, to converge against the paced workload.
   */
  precopyBandwidth: number;
  /**
   * downtime-limit (ms). With postcopy 1 ms, so precopy never converges and the demo decides when to
   * switch; precopy only: QEMU's default 300 ms.
   */
  downtimeLimitMs: number;
  /** max-postcopy-bandwidth (bytes/s): RAM/16, so the background transfer lasts a few seconds. */
  postcopyBandwidth: number;
  /**
   * Precopy time before migrate-start-postcopy (ms), at least; with XBZRLE the switch also waits (up to
   * xbzrleWaitMs) until XBZRLE has encoded pages — a page is cached when resent after the first full
   * pass and encoded when resent again, so that takes a pass or two.
   */
  precopyMs: number;
  xbzrleWaitMs: number;
  /** Time from the destination's guest starting (RESUME) to the cut (ms). */
  cutAfterMs: number;
  /** How long the demo watches the paused state before recovering (ms). */
  pausedMs: number;
  /** XBZRLE cache size (bytes). */
  xbzrleCacheSize: number;
  /** Give up on a phase after this long (ms). */
  phaseTimeoutMs: number;
  /** Precopy only: cancel if it has not converged after this long (ms). */
  convergeTimeoutMs: number;
}

/** The pacing for `o` (see DemoPacing). */
export function demoPacing(o: DemoOptions): DemoPacing {
  const ram = o.ramMiB * MiB;
  return {
    precopyBandwidth: Math.max(o.postcopy ? MiB : 32 * MiB, Math.floor(ram / 4)),
    downtimeLimitMs: o.postcopy ? 1 : 300,
    postcopyBandwidth: Math.max(MiB / 2, Math.floor(ram / 16)),
    precopyMs: 1200,
    xbzrleWaitMs: 8000,
    cutAfterMs: 800,
    pausedMs: 400,
    xbzrleCacheSize: Math.min(32 * MiB, 2 ** Math.floor(Math.log2(ram / 8))),
    phaseTimeoutMs: 30_000,
    convergeTimeoutMs: 20_000,
  };
}

/** `postcopy demo --help`. */
export const DEMO_HELP = `usage: postcopy demo [--ram SIZE_MIB] [--workload SPEC] [--no-xbzrle]
                    [--no-postcopy] [--no-cut] [--cut-mode reset|kill]

Migrates a running simulated VM between two \`postcopy vm\` processes on
loopback and tells the story of a postcopy migration:

  1. precopy (with XBZRLE) for a moment, with a progress bar;
  2. migrate-start-postcopy: the source stops, the destination's guest runs
     and every missing page it reads is a fault (REQ_PAGES to the source);
  3. a FaultProxy between the two cuts the link: both sides postcopy-paused;
  4. migrate-recover on the destination, migrate resume=true on the source:
     both postcopy-active again, the transfer continues;
  5. completion, a summary (times, downtime, pages, requests, fault latency,
     recovery time) and a check that the destination's RAM equals the
     source's RAM as it was when the source stopped (x-ram-digest).

Exit status 0 only if the RAM check passes.

  --ram SIZE_MIB     guest RAM in MiB (default ${DEFAULT_DEMO.ramMiB}, at least ${MIN_RAM_MIB})
  --workload SPEC    the source guest's workload, as \`postcopy vm --workload\`
                     (default ${DEFAULT_DEMO.workload},
                     with --no-postcopy ${PRECOPY_DEMO_WORKLOAD});
                     the destination's guest reads (${DESTINATION_WORKLOAD})
  --no-xbzrle        precopy without XBZRLE
  --no-postcopy      precopy only, to completion (no switchover, no cut)
  --no-cut           postcopy without the cut and the recovery
  --cut-mode MODE    how the link is cut: reset (RST, default) or kill (FIN)`;

/** Parses `postcopy demo` arguments; throws PostcopyError('BAD_OPTION') with a clear message. */
export function parseDemoArgs(args: readonly string[]): DemoOptions | { help: true } {
  const o: DemoOptions = { ...DEFAULT_DEMO };
  let cutModeGiven = false;
  let workloadGiven = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw new PostcopyError('BAD_OPTION', `option ${a} needs a value`);
      return v;
    };
    switch (a) {
      case '-h':
      case '--help':
        return { help: true };
      case '--ram': {
        const v = value();
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        if (!Number.isSafeInteger(n) || n < MIN_RAM_MIB) {
          throw new PostcopyError('BAD_OPTION', `--ram takes a whole number of MiB, at least ${MIN_RAM_MIB}, not '${v}'`);
        }
        o.ramMiB = n;
        break;
      }
      case '--workload':
        o.workload = value();
        workloadGiven = true;
        break;
      case '--no-xbzrle':
        o.xbzrle = false;
        break;
      case '--no-postcopy':
        o.postcopy = false;
        break;
      case '--no-cut':
        o.cut = false;
        break;
      case '--cut-mode': {
        const m = value();
        if (m !== 'reset' && m !== 'kill') throw new PostcopyError('BAD_OPTION', `--cut-mode must be reset or kill, not '${m}'`);
        o.cutMode = m;
        cutModeGiven = true;
        break;
      }
      default:
        throw new PostcopyError('BAD_OPTION', `unknown option '${a}'`);
    }
  }
  if (!o.postcopy && !workloadGiven) o.workload = PRECOPY_DEMO_WORKLOAD;
  // The workload is checked here, with the vm's own parser, rather than by a child that would die at start.
  try {
    parseWorkload(o.workload);
  } catch (e) {
    throw new PostcopyError('BAD_OPTION', `--workload ${o.workload}: ${(e as Error).message}`);
  }
  if (!o.postcopy) {
    if (cutModeGiven) throw new PostcopyError('BAD_OPTION', '--cut-mode needs postcopy (drop --no-postcopy)');
    o.cut = false; // a cut during precopy fails the migration: there is nothing to recover
  }
  if (!o.cut && cutModeGiven) throw new PostcopyError('BAD_OPTION', '--cut-mode contradicts --no-cut');
  return o;
}
