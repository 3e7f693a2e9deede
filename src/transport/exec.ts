/**
 * `exec:` transports: a shell command in its own process group, its stdout
 * read and its stdin written as one duplex channel.
 *
 * The duplex is joined by hand, not with Duplex.from(): that one treats the
 * command's stdin closing before our side ended it as a "Premature close"
 * error. A command that has written all it had and exited (`exec:cat FILE`
 * on an incoming side) closes its stdin at a moment that races with the last
 * read of its stdout, so about one accept in a hundred failed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Duplex } from 'node:stream';

/** Kill an exec child and everything it started (its own process group). */
export function killGroup(child: ChildProcess): void {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    child.kill('SIGTERM');
  }
}

/** `/bin/sh -c command` in its own process group, stdin and stdout piped, stderr inherited. */
export function spawnCommand(command: string): ChildProcess & { stdin: NonNullable<ChildProcess['stdin']>; stdout: NonNullable<ChildProcess['stdout']> } {
  return spawn('/bin/sh', ['-c', command], { stdio: ['pipe', 'pipe', 'inherit'], detached: true }) as ReturnType<typeof spawnCommand>;
}

/**
 * One duplex over the command's stdout (readable side, with backpressure)
 * and stdin (writable side). The readable side ends when stdout does; the
 * stdin closing on its own is not an error here (callers decide what a
 * failed write means, from stdin's 'error').
 */
export function commandDuplex(child: ReturnType<typeof spawnCommand>): Duplex {
  const { stdin, stdout } = child;
  const duplex = new Duplex({
    read() {
      stdout.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      stdin.write(chunk, cb);
    },
    final(cb) {
      stdin.end(cb);
    },
    destroy(err, cb) {
      stdout.destroy();
      stdin.destroy();
      cb(err);
    },
  });
  stdout.on('data', (d: Buffer) => {
    if (!duplex.push(d)) stdout.pause();
  });
  stdout.once('end', () => duplex.push(null));
  stdout.once('error', (e) => duplex.destroy(e));
  return duplex;
}
