/**
 * `postcopy demo` (`npm start`): two `postcopy vm` processes on loopback
 * and the whole postcopy story — precopy with a progress bar, the switch to
 * postcopy with the destination's guest faulting pages in, a cut of the link
 * by a FaultProxy, recovery, completion, a summary, and a check that the
 * destination's RAM equals the source's (x-ram-digest). Exit 0 only if
 * verified. The story lives in src/cli/demo/.
 */
import { DEMO_HELP, parseDemoArgs } from './demo/options.js';
import { runDemo } from './demo/run.js';
import type { Verb } from './main.js';

export { runDemo } from './demo/run.js';
export { DEFAULT_DEMO, PRECOPY_DEMO_WORKLOAD, parseDemoArgs, type DemoOptions } from './demo/options.js';

export const verb: Verb = {
  summary: 'precopy → postcopy → cut → recovery → verified RAM, between two local VMs',
  async run(args: string[]): Promise<number> {
    let parsed: ReturnType<typeof parseDemoArgs>;
    try {
      parsed = parseDemoArgs(args);
    } catch (e) {
      console.error(`postcopy demo: ${(e as Error).message}\n\n${DEMO_HELP}`);
      return 2;
    }
    if ('help' in parsed) {
      console.log(DEMO_HELP);
      return 0;
    }
    return runDemo(parsed);
  },
};
