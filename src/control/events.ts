/**
 * QMP events: the shape QEMU sends (`{"timestamp": {"seconds", "microseconds"},
 * "event", "data"}`, members in that order) and a small bus that the QMP
 * server subscribes to.
 */

/** Wall-clock time of an event, as QMP reports it. */
export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** Data of the migration events we emit. */
export interface QmpEventData {
  MIGRATION: { status: string };
  MIGRATION_PASS: { pass: number };
  STOP: undefined;
  RESUME: undefined;
}

/** One QMP event. `data` is absent for events without data (STOP, RESUME). */
export interface QmpEvent {
  timestamp: QmpTimestamp;
  event: string;
  data?: Record<string, unknown>;
}

/** The current time as a QMP timestamp (microsecond resolution). */
export function qmpTimestamp(nowMs: number = performance.timeOrigin + performance.now()): QmpTimestamp {
  const us = Math.floor(nowMs * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

/** A listener for events on an {@link EventBus}. */
export type EventListener = (ev: QmpEvent) => void;

/**
 * Fan-out of QMP events to subscribers (QMP server connections, tests, the
 * CLI). Delivery is synchronous and in emission order; a throwing listener
 * does not stop the others.
 */
export class EventBus {
  private readonly listeners = new Set<EventListener>();

  /** Subscribe; returns the unsubscribe function. */
  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Emit one of the typed migration events. */
  emit<K extends keyof QmpEventData>(event: K, ...data: QmpEventData[K] extends undefined ? [] : [QmpEventData[K]]): QmpEvent;
  /** Emit any event by name. */
  emit(event: string, data?: Record<string, unknown>): QmpEvent;
  emit(event: string, data?: Record<string, unknown>): QmpEvent {
    const ev: QmpEvent = data === undefined ? { timestamp: qmpTimestamp(), event } : { timestamp: qmpTimestamp(), event, data };
    for (const fn of [...this.listeners]) {
      try {
        fn(ev);
      } catch {
        // one broken subscriber must not starve the others
      }
    }
    return ev;
  }
}
