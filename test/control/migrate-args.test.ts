import { describe, expect, it } from 'vitest';
import { parseQmpJson, type QmpObject } from '../../src/control/json.js';
import { visitContinueArgs, visitMigrateArgs, visitNoArgs, visitUriArgs } from '../../src/control/migrate-args.js';

const o = (s: string) => parseQmpJson(s) as QmpObject;

// Every expected text below was captured from qemu-system-x86_64 7.2.22.
describe('migration command arguments', () => {
  it('migrate', () => {
    expect(visitMigrateArgs(o('{"uri":"tcp:h:1","resume":true,"detach":false}'))).toEqual({ uri: 'tcp:h:1', resume: true, detach: false });
    expect(() => visitMigrateArgs(o('{}'))).toThrow("Parameter 'uri' is missing");
    expect(() => visitMigrateArgs(o('{"uri":5}'))).toThrow("Invalid parameter type for 'uri', expected: string");
    expect(() => visitMigrateArgs(o('{"uri":"x","resume":1}'))).toThrow("Invalid parameter type for 'resume', expected: boolean");
    expect(() => visitMigrateArgs(o('{"uri":"x","foo":1}'))).toThrow("Parameter 'foo' is unexpected");
    expect(() => visitMigrateArgs(o('{"uri":"x","blk":"y","inc":1}'))).toThrow("Invalid parameter type for 'blk', expected: boolean");
  });
  it('migrate-incoming / migrate-recover / migrate-continue / no-argument commands', () => {
    expect(visitUriArgs(o('{"uri":"defer"}'))).toBe('defer');
    expect(() => visitUriArgs(o('{}'))).toThrow("Parameter 'uri' is missing");
    expect(() => visitUriArgs(o('{"uri":"tcp:1:1","x":1}'))).toThrow("Parameter 'x' is unexpected");
    expect(visitContinueArgs(o('{"state":"pre-switchover"}'))).toBe('pre-switchover');
    expect(() => visitContinueArgs(o('{}'))).toThrow("Parameter 'state' is missing");
    expect(() => visitContinueArgs(o('{"state":"bogus"}'))).toThrow("Parameter 'state' does not accept value 'bogus'");
    expect(() => visitNoArgs(o('{"x":1}'))).toThrow("Parameter 'x' is unexpected");
    expect(() => visitNoArgs(o('{}'))).not.toThrow();
  });
});
