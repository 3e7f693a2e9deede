/**
 * Transparent huge pages for guest RAM. QEMU advises the anonymous RAM of a
 * guest with MADV_HUGEPAGE; so do we, through the one native helper of the
 * package (native/os.c, built at install time when a C compiler is
 * there). Without it, or with POSTCOPY_NO_THP=1 in the environment, RAM stays
 * on 4 KiB pages: behaviour is the same, only first touches cost more (a page
 * fault per 4 KiB instead of per 2 MiB, which dominates loading a GiB of RAM
 * on a virtual machine).
 */
import { nativeOs, type NativeOs } from '../native.js';

/** The transparent huge page size on x86-64. */
export const HUGE_PAGE_SIZE = 2 << 20;

/** The 2 MiB-aligned interior of a view that was advised. */
export interface HugePageAdvice {
  address: number;
  length: number;
}

let native: NativeOs | null | undefined;

function load(): NativeOs | null {
  if (native !== undefined) return native;
  native = process.env.POSTCOPY_NO_THP === '1' ? null : nativeOs();
  return native;
}

/** True when guest RAM can be advised (the addon is built and not disabled). */
export function hugePagesAvailable(): boolean {
  return load() !== null;
}

/**
 * Asks the kernel to back `view` with transparent huge pages where it holds
 * whole 2 MiB pages. Returns what was advised, or undefined when huge pages
 * are not available here. Advice only: contents and addresses do not change,
 * and a kernel that refuses it (built without THP: madvise fails with EINVAL)
 * costs nothing but the advice, which is not asked for again.
 */
export function adviseHugePages(view: Uint8Array): HugePageAdvice | undefined {
  const n = load();
  if (!n) return undefined;
  try {
    return n.advise(view);
  } catch {
    native = null;
    return undefined;
  }
}

/** Where `view`'s first byte lives in this process (undefined without the native helper). */
export function viewAddress(view: Uint8Array): number | undefined {
  return load()?.address(view);
}
