/**
 * `postcopy vm`: a simulated VM process driven over QMP like QEMU 7.2
 * (see src/vm/vm.ts). Prints nothing on stdout; errors go to stderr.
 */
import { PostcopyError } from '../errors.js';
import { parseSize, parseWorkload } from '../vm/options.js';
import { SimVm, type VmOptions } from '../vm/vm.js';
import { NICE_MAX, NICE_MIN } from '../threads.js';
import type { Verb } from './main.js';

const HELP = `usage: postcopy vm [--machine none] [--ram SIZE] [--mem-path FILE] [--workload SPEC]
                  [-S] [--incoming URI|defer] [--fault-priority N] --qmp unix:PATH|tcp:HOST:PORT

A simulated VM that migrates like qemu-system-x86_64 7.2 -M none, driven over QMP.

  --machine NAME     machine type name (only "none")
  --ram SIZE         RAM size (64M, 1G; a bare number means MiB); one block "ram".
                     Without --ram an incoming VM adopts the source's RAM layout.
  --mem-path FILE    load RAM from FILE when it has the RAM's size; write RAM back
                     at quit and after an incoming migration
  --workload SPEC    pattern=seq|rand|hot,rate=N|max,bytes=N,wss=SIZE,mode=write|read
  -S                 start paused (prelaunch)
  --incoming URI     wait for an incoming migration on URI, or "defer" (migrate-incoming)
  --qmp ADDRESS      QMP socket (unix:PATH or tcp:HOST:PORT)
  --fault-priority N nice value (-20..19) of the threads that serve page faults in
                     postcopy: an incoming VM's migration thread, an outgoing VM's
                     urgent worker (with postcopy-preempt). Raising it needs root;
                     otherwise they stay as they are. Default: unchanged.

Postcopy (capability postcopy-ram on both sides): migrate-start-postcopy on the
source; the destination's workload runs from POSTCOPY_RUN and every page it
touches that has not arrived yet is requested from the source (it waits like a
vCPU in userfaultfd; x-query-workload shows faults and blocked-ms).
migrate-pause (either side), migrate-recover {uri} (destination) and
migrate {uri, resume: true} (source) recover a broken link as QEMU 7.2 does.`;

/** Parses the command line into VmOptions and the QMP address. */
export function parseVmArgs(args: string[]): { opts: VmOptions; qmp: string } | { help: true } {
  const opts: VmOptions = {};
  let qmp: string | undefined;
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
      case '--machine':
      case '-M': {
        const m = value();
        if (m !== 'none') throw new PostcopyError('BAD_OPTION', `unsupported machine type '${m}' (only 'none')`);
        opts.machine = m;
        break;
      }
      case '--ram':
      case '-m':
        opts.ram = parseSize(value(), 'M');
        if (opts.ram <= 0 || opts.ram % 4096 !== 0) throw new PostcopyError('BAD_OPTION', `RAM size must be a positive multiple of 4 KiB`);
        break;
      case '--mem-path':
        opts.memPath = value();
        break;
      case '--workload':
        opts.workload = parseWorkload(value());
        break;
      case '-S':
        opts.startPaused = true;
        break;
      case '--incoming':
        opts.incoming = value();
        break;
      case '--qmp':
        qmp = value();
        break;
      case '--fault-priority': {
        const v = value();
        const n = Number(v);
        if (!/^-?\d+$/.test(v) || n < NICE_MIN || n > NICE_MAX) {
          throw new PostcopyError('BAD_OPTION', `--fault-priority must be a whole nice value between ${NICE_MIN} and ${NICE_MAX}, not '${v}'`);
        }
        opts.faultPriority = n;
        break;
      }
      default:
        throw new PostcopyError('BAD_OPTION', `unknown option '${a}'`);
    }
  }
  if (!qmp) throw new PostcopyError('BAD_OPTION', '--qmp is required');
  if (opts.ram === undefined && opts.incoming === undefined) {
    throw new PostcopyError('BAD_OPTION', '--ram is required unless --incoming is given');
  }
  return { opts, qmp };
}

export const verb: Verb = {
  summary: 'a simulated VM (workload, RAM) that QMP migrates like QEMU 7.2',
  async run(args: string[]): Promise<number> {
    let parsed: ReturnType<typeof parseVmArgs>;
    try {
      parsed = parseVmArgs(args);
    } catch (e) {
      console.error(`postcopy vm: ${(e as Error).message}\n\n${HELP}`);
      return 2;
    }
    if ('help' in parsed) {
      console.log(HELP);
      return 0;
    }
    let resolveExit!: (code: number) => void;
    const exit = new Promise<number>((r) => (resolveExit = r));
    let vm: SimVm | undefined;
    try {
      vm = new SimVm({ ...parsed.opts, onExit: (code) => resolveExit(code) });
      await vm.start(parsed.qmp);
    } catch (e) {
      console.error(`postcopy vm: ${(e as Error).message}`);
      await vm?.qmp.close().catch(() => undefined);
      setTimeout(() => process.exit(1), 50).unref();
      return 1;
    }
    const theVm = vm;
    const onSignal = (): void => void theVm.shutdown(0);
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    const code = await exit;
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    // Sockets and the engine may hold the loop; QEMU exits at once.
    setTimeout(() => process.exit(code), 50).unref();
    return code;
  },
};
