import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { frameLayer, summariseProfile } from '../../bench/lib/profile.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'profile-test-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const frame = (functionName: string, url: string) => ({ functionName, url, lineNumber: 9, scriptId: '0', columnNumber: 0 });

/**
 * root → ramSave (src/source) → write (node:net) → writev (native)
 *      → copyTo (src/engine); idle; gc.
 */
function writeProfile(): string {
  const nodes = [
    { id: 1, callFrame: frame('(root)', ''), children: [2, 5, 6] },
    { id: 2, callFrame: frame('ramSave', 'file:///x/dist/src/source/ram-saver.js'), children: [3, 7] },
    { id: 3, callFrame: frame('write', 'node:net'), children: [4] },
    { id: 4, callFrame: frame('writev', ''), children: [] },
    { id: 5, callFrame: frame('(idle)', ''), children: [] },
    { id: 6, callFrame: frame('(garbage collector)', ''), children: [] },
    { id: 7, callFrame: frame('copyTo', 'file:///x/dist/src/engine/bytes.js'), children: [] },
  ];
  // Sample i lasts timeDeltas[i+1] µs; times start at 1000 µs.
  const samples = [4, 4, 7, 5, 6, 2, 4];
  const timeDeltas = [1000, 100, 100, 200, 300, 400, 500];
  const file = path.join(dir, 'a.cpuprofile');
  fs.writeFileSync(file, JSON.stringify({ nodes, startTime: 0, endTime: 3000, samples, timeDeltas }));
  return file;
}

describe('bench profile summary', () => {
  it('classifies frames by layer', () => {
    expect(frameLayer(frame('push', 'file:///w/dist/src/engine/bytes.js'))).toBe('src/engine');
    expect(frameLayer(frame('wasm-function[3]', 'wasm://wasm/abc'))).toBe('wasm hot path');
    expect(frameLayer(frame('addChunk', 'node:internal/streams/readable'))).toBe('node:streams/readable');
    expect(frameLayer(frame('(garbage collector)', ''))).toBe('(gc)');
    expect(frameLayer(frame('writev', ''))).toBe('(native)');
  });

  it('sums self time by layer, function and our nearest caller', () => {
    const s = summariseProfile(writeProfile());
    expect(s.windowMs).toBeCloseTo(1.6, 6);
    const layer = new Map(s.byLayer);
    expect(layer.get('(native)')).toBeCloseTo(0.1 + 0.1 + 0.0, 6); // samples 0,1 (and the last, 0 µs)
    expect(layer.get('src/engine')).toBeCloseTo(0.2, 6);
    expect(layer.get('(idle)')).toBeCloseTo(0.3, 6);
    expect(layer.get('(gc)')).toBeCloseTo(0.4, 6);
    expect(layer.get('src/source')).toBeCloseTo(0.5, 6);
    // writev is charged to ramSave, its nearest caller of ours; idle is left out of owners.
    const owners = new Map(s.byOwner);
    expect(owners.get('ramSave src/source/ram-saver.js:10')).toBeCloseTo(0.7, 6);
    expect(owners.get('copyTo src/engine/bytes.js:10')).toBeCloseTo(0.2, 6);
    expect(owners.get('(no caller of ours)')).toBeCloseTo(0.4, 6);
    expect(s.byOwner[0]![0]).toBe('ramSave src/source/ram-saver.js:10');
  });

  it('keeps only samples inside the window', () => {
    // Sample times: 1000, 1100, 1200, 1400, 1700, 2100, 2600.
    const s = summariseProfile(writeProfile(), 1150, 1750);
    expect(s.windowMs).toBeCloseTo(0.9, 6); // samples at 1200 (0.2), 1400 (0.3), 1700 (0.4)
    expect(new Map(s.byLayer).get('src/source')).toBeUndefined();
    expect(new Map(s.byLayer).get('src/engine')).toBeCloseTo(0.2, 6);
  });
});
