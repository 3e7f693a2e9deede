/**
 * The four configuration commands every migrating process has
 * (migrate-set-capabilities, query-migrate-capabilities,
 * migrate-set-parameters, query-migrate-parameters), wired to one
 * {@link MigrationConfig} holder and registered on a QmpServer.
 */
import { commitCapabilities, visitCapabilities, defaultCapabilities, queryCapabilities, type CapabilityContext, type Capabilities } from './capabilities.js';
import type { QmpObject } from './json.js';
import { checkMembers } from './qapi.js';
import { applyParameters, defaultParameters, queryParameters, type Parameters } from './parameters.js';
import type { QmpServer } from './qmp-server.js';

/** Capabilities and parameters of one process, changed only through the QMP rules. */
export class MigrationConfig {
  capabilities: Capabilities = defaultCapabilities();
  parameters: Parameters = defaultParameters();
  /** Called after a successful change (e.g. to apply max-bandwidth to a running migration). */
  onChange: ((what: 'capabilities' | 'parameters', before: Capabilities | Parameters) => void) | undefined;

  /**
   * @param context live facts for the capability checks (migration running,
   *   -incoming, host postcopy support); asked at each change.
   */
  constructor(private readonly context: () => CapabilityContext = () => ({})) {}

  /** migrate-set-capabilities with QEMU's checks (arguments as QMP gives them). */
  setCapabilities(args: QmpObject): void {
    const changes = visitCapabilities(args.capabilities);
    checkMembers(args, ['capabilities']);
    const ctx: CapabilityContext = {
      tls: this.parameters['tls-creds'] !== '',
      multifdCompression: this.parameters['multifd-compression'],
      ...this.context(),
    };
    const before = this.capabilities;
    this.capabilities = commitCapabilities(before, changes, ctx);
    this.onChange?.('capabilities', before);
  }

  /** migrate-set-parameters with QEMU's checks. */
  setParameters(args: QmpObject): void {
    const before = this.parameters;
    this.parameters = applyParameters(before, args, { zeroCopySend: this.capabilities['zero-copy-send'] });
    this.onChange?.('parameters', before);
  }
}

/** Register the four configuration commands on `server`. */
export function registerConfigCommands(server: QmpServer, config: MigrationConfig): void {
  server.register('migrate-set-capabilities', (args) => {
    config.setCapabilities(args);
  });
  server.register('query-migrate-capabilities', (args) => {
    checkMembers(args, []);
    return queryCapabilities(config.capabilities);
  });
  server.register('migrate-set-parameters', (args) => config.setParameters(args));
  server.register('query-migrate-parameters', (args) => {
    checkMembers(args, []);
    return queryParameters(config.parameters);
  });
}
