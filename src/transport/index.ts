/** Transports: migration URIs, channels with shutdown, listeners, in-memory pairs. */
export { parseMigrationUri, TransportError, type MigrationUri, type SocketAddress, type UriDirection } from './uri.js';
export { toChannel, memoryChannelPair, ChannelShutdownError, type Channel, type ChannelControl, type PeerInfo, type ShutdownOptions } from './channel.js';
export { connect, execChannel, socketChannel } from './connect.js';
export { listen, type Listener } from './listen.js';
export { registerFd, unregisterFd, takeFd } from './fds.js';
