/** Helpers for the real-QEMU destination tests. */
import net from 'node:net';

/** A loopback TCP listener accepting one connection (what migrate-incoming / migrate-recover would do). */
export async function listen(): Promise<{ server: net.Server; port: number; conn: Promise<net.Socket> }> {
  const server = net.createServer();
  const conn = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as net.AddressInfo).port, conn };
}
