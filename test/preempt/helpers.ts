/** Helpers of the preempt tests. */
import fs from 'node:fs';
import net from 'node:net';

/** Nice values of a process's threads by thread id, from /proc (field 19 of each thread's stat). */
export function threadNices(pid = process.pid): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      out.set(Number(tid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/** `n` TCP connections over loopback: the client ends and the server's, in connection order. */
export async function connections(n: number): Promise<{ client: net.Socket[]; server: net.Socket[] }> {
  const srv = net.createServer({ noDelay: true });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  const server: net.Socket[] = [];
  const all = new Promise<void>((r) =>
    srv.on('connection', (c) => {
      server.push(c);
      if (server.length === n) r();
    }),
  );
  const client: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const c = net.connect({ port, host: '127.0.0.1', noDelay: true });
    await new Promise((r) => c.once('connect', r));
    client.push(c);
  }
  await all;
  srv.close();
  return { client, server };
}
