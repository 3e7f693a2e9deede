/** Control plane: capabilities, parameters, statuses, events, MigrationInfo, QMP server. */
export * from './capabilities.js';
export * from './parameters.js';
export * from './status.js';
export * from './events.js';
export * from './info.js';
export * from './json.js';
export * from './qapi.js';
export { QmpServer, type QmpConnection, type QmpHandler, type QmpCommandOptions, type QmpRequestContext, type QmpServerOptions } from './qmp-server.js';
export { MigrationConfig, registerConfigCommands } from './config-commands.js';
export * from './migrate-args.js';
