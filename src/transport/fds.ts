/**
 * Named file descriptors for `fd:NAME` URIs (what QEMU's `getfd` registers).
 * Taking an fd removes it from the registry, as QEMU does. Outgoing `fd:`
 * only looks names up ("File descriptor named '99' has not been found", even
 * for digits, as QEMU 7.2 does); incoming also accepts a decimal fd number.
 */
import { TransportError } from './uri.js';

const registry = new Map<string, number>();

/** Register `fd` under `name` (replacing, like getfd, an fd already under that name). */
export function registerFd(name: string, fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new TransportError(`Invalid file descriptor number '${fd}'`);
  registry.set(name, fd);
}

/** Forget a registered fd without using it (QEMU's closefd); returns whether it existed. */
export function unregisterFd(name: string): boolean {
  return registry.delete(name);
}

/**
 * Take the fd registered as `name`. With `allowNumber` (incoming), a name
 * starting with a digit is parsed as an fd number instead.
 */
export function takeFd(name: string, allowNumber = false): number {
  if (allowNumber && /^[0-9]/.test(name)) {
    if (!/^[0-9]+$/.test(name)) throw new TransportError(`Invalid file descriptor number '${name}'`);
    return Number(name);
  }
  const fd = registry.get(name);
  if (fd === undefined) throw new TransportError(`File descriptor named '${name}' has not been found`);
  registry.delete(name);
  return fd;
}
