/** Turning decoded MIG_CMD records into inspect's plain records. */

import { type Command, commandId } from '../wire/command.js';
import { MIG_CMD_NAMES } from '../wire/constants.js';
import type { InspectCommand } from './types.js';

/** A command as inspect reports it: QEMU's MIG_CMD name plus its decoded payload. */
export function commandRecord(cmd: Command, offset: number): InspectCommand {
  const { kind, ...args } = cmd;
  return { offset, name: MIG_CMD_NAMES[commandId(cmd)] ?? kind, args: args as Record<string, unknown> };
}
