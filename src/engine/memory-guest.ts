/**
 * Adapts memory/'s GuestMemory (RAM blocks and DirtyLog in the hot path's
 * shared memory) to the SourceGuest the engine drives, and destination
 * blocks to GuestMemory blocks.
 */
import type { GuestMemory, PageBitmap } from '../memory/index.js';
import type { EngineRamBlock, PageBits, SourceGuest } from './ports.js';

/** What the VM adds to its memory: run control. */
export interface GuestControl {
  stop(): void | Promise<void>;
  resume(): void | Promise<void>;
  setThrottle?(percent: number): void;
  readonly runState?: string;
}

/** Engine views of a GuestMemory's blocks (views over the shared memory); `zeroed` when nothing wrote them yet. */
export function engineBlocks(mem: GuestMemory, zeroed = false): EngineRamBlock[] {
  return mem.blocks.map((b) => ({ idstr: b.idstr, usedLength: b.usedLength, ramAddr: b.ramAddr, bytes: b.bytes(), zeroed }));
}

/**
 * A SourceGuest over `mem`: syncDirty fetches-and-clears the DirtyLog (the
 * WASM bitmap sync) into a scratch PageBitmap and ORs it into the engine's
 * bitmap, counting newly dirty pages.
 */
export function sourceGuestFromMemory(mem: GuestMemory, control: GuestControl): SourceGuest {
  const blocks = engineBlocks(mem);
  const scratch: PageBitmap[] = mem.blocks.map((b) => mem.newBitmap(b));
  const drain = (i: number): Uint32Array => {
    const tmp = scratch[i]!;
    tmp.clearAll();
    mem.dirtyLog.syncInto(tmp, mem.blocks[i]!);
    return tmp.words32();
  };
  return {
    blocks,
    get runState() {
      return control.runState;
    },
    startDirtyLog() {
      // Logging is always on in the memory layer; forget what came before.
      for (let i = 0; i < blocks.length; i++) drain(i);
    },
    syncDirty(i: number, bitmap: PageBits): number {
      const src = drain(i);
      let n = 0;
      for (let w = 0; w < bitmap.length; w++) {
        const add = src[w]! & ~bitmap[w]!;
        if (add !== 0) {
          bitmap[w] = bitmap[w]! | add;
          let v = add >>> 0;
          while (v) {
            v &= v - 1;
            n++;
          }
        }
      }
      return n;
    },
    stop: () => control.stop(),
    resume: () => control.resume(),
    setThrottle: control.setThrottle ? (p: number) => control.setThrottle!(p) : undefined,
  };
}
