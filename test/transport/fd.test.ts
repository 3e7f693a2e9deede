import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, constants, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Channel } from '../../src/transport/channel.js';
import { connect } from '../../src/transport/connect.js';
import { registerFd } from '../../src/transport/fds.js';
import { listen } from '../../src/transport/listen.js';

const dir = mkdtempSync(join(tmpdir(), 'fd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A FIFO opened read-write: what the channel writes, it reads back. */
function loopFd(name: string): number {
  const path = join(dir, name);
  execFileSync('mkfifo', [path]);
  return openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
}

function echo(c: Channel, text: string): Promise<string> {
  return new Promise((resolve) => {
    c.once('data', (d: Buffer) => resolve(d.toString()));
    c.write(text);
  });
}

describe('fd transport', () => {
  it('outgoing fd:NAME uses the registered fd', async () => {
    registerFd('migfd', loopFd('out'));
    const c = await connect('fd:migfd');
    expect(c.peer).toEqual({ transport: 'fd', description: 'fd:migfd' });
    expect(await echo(c, 'QEVM')).toBe('QEVM');
    c.shutdown();
    await expect(connect('fd:migfd')).rejects.toThrow("File descriptor named 'migfd' has not been found");
  });
  it('incoming fd:N is one already connected stream', async () => {
    const fd = loopFd('in');
    const l = await listen(`fd:${fd}`);
    expect(l.socketAddress).toBeUndefined();
    const c = await l.accept();
    expect(await echo(c, 'hello')).toBe('hello');
    c.shutdown();
    await l.close();
  });
});
