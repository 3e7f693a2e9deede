/**
 * Error classes. Each has a stable `code` and a message worded like QEMU's
 * where QEMU has one.
 */

/** Base class: every error the library throws on purpose. */
export class PostcopyError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * A peer sent bytes that break the protocol. `offset` is the byte offset in
 * the stream (or in the buffer being decoded) where the bad item starts or
 * where the problem was found; `what` names the item.
 */
export class ProtocolError extends PostcopyError {
  readonly offset: number;
  readonly what: string;
  constructor(what: string, message: string, offset: number, options?: { cause?: unknown }) {
    super('PROTOCOL', `${what}: ${message} (at offset ${offset})`, options);
    this.what = what;
    this.offset = offset;
  }
}

/**
 * The stream ended before an item was complete (a short read). A subclass of
 * ProtocolError so callers that only care about "bad stream" catch both;
 * callers that distinguish an I/O cut (postcopy pause) check this class.
 */
export class TruncatedError extends ProtocolError {
  constructor(what: string, needed: number, offset: number) {
    super(what, `stream ended, ${needed} more byte(s) needed`, offset);
    (this as { code: string }).code = 'TRUNCATED';
  }
}

/**
 * A QMP-level error: `klass` is the QMP error class ("GenericError",
 * "CommandNotFound", "DeviceNotActive", ...), `message` the desc.
 */
export class QmpError extends PostcopyError {
  readonly klass: string;
  constructor(message: string, klass = 'GenericError') {
    super('QMP', message);
    this.klass = klass;
  }
}
