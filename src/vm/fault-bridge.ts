/**
 * FaultBridge: the main-thread half of the workload's postcopy fault path.
 * A workload worker that touches a page whose received bit is clear posts a
 * FaultMessage and waits on its futex word (CONTROL_FAULT); the bridge asks
 * the destination for the page (`ensure()`: REQ_PAGES, shared with any other
 * fault on that page, kept across a pause) and wakes the worker once the
 * page's bytes are in place — the job of QEMU's fault thread and
 * UFFDIO_COPY's wake-up.
 */
import { CONTROL_FAULT, type FaultMessage } from './workload-types.js';

/** What the bridge needs from the destination (MigrationDestination has it). */
export interface FaultTarget {
  ensure(idstr: string, offset: number, length?: number): Promise<void>;
}

/** Page size of the workload's view (the target page). */
const PAGE = 4096;

export class FaultBridge {
  /** Faults served (pages the workers waited for). */
  served = 0;
  /** Faults whose ensure() rejected (the migration failed; the worker stays blocked). */
  failed = 0;
  /** Faults being served now. */
  inFlight = 0;

  /**
   * @param target the destination
   * @param idstrs RAM block idstr by the block index workers report
   */
  constructor(
    private readonly target: FaultTarget,
    private readonly idstrs: readonly string[],
  ) {}

  /**
   * Serves one fault: waits for the page, then clears the worker's futex
   * word `ctl[index]` and notifies it. A failed migration leaves the worker
   * blocked (the process is about to end, as QEMU's does).
   */
  async serve(msg: FaultMessage, ctl: Int32Array, index = CONTROL_FAULT): Promise<void> {
    const idstr = this.idstrs[msg.block];
    if (idstr === undefined) throw new RangeError(`fault on unknown block index ${msg.block}`);
    this.inFlight++;
    try {
      await this.target.ensure(idstr, msg.page * PAGE, PAGE);
    } catch {
      this.failed++;
      return;
    } finally {
      this.inFlight--;
    }
    this.served++;
    FaultBridge.wake(ctl, index);
  }

  /** Clears a futex word and wakes its waiter. */
  static wake(ctl: Int32Array, index = CONTROL_FAULT): void {
    Atomics.store(ctl, index, 0);
    Atomics.notify(ctl, index);
  }
}
