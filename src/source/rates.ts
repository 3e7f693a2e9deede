/**
 * The source's moving figures, as QEMU computes them: the 100 ms bandwidth
 * window (migration_update_counters: bandwidth, threshold, mbps,
 * pages-per-second, expected-downtime) and the ≥ 1 s rate period at bitmap
 * syncs (dirty-pages-rate, XBZRLE cache-miss-rate / encoding-rate, the
 * auto-converge trigger).
 */
import { TARGET_PAGE_SIZE } from '../wire/constants.js';
import { RATE_PERIOD_MS } from './options.js';
import type { RamSaver } from './ram-saver.js';

const TP = TARGET_PAGE_SIZE;

/** Window and period state of one outgoing migration. */
export class SourceRates {
  /** Start of the current bandwidth window (ms), its first byte and page counts. */
  iterStart = 0;
  iterBytes = 0;
  private iterPages = 0;
  /** bandwidth × downtime-limit, bytes: complete when pending is below it. */
  thresholdSize = 0;
  mbps = 0;
  pagesPerSecond = 0;
  expectedDowntime = 0;
  dirtyPagesRate = 0;
  private periodStart = 0;
  private numDirtyPagesPeriod = 0;
  private bytesXferPrev = 0;
  private pageCountPrev = 0;
  private xbzrleMissPrev = 0;
  private xbzrlePagesPrev = 0;
  private xbzrleBytesPrev = 0;

  /** Starts the first window and period. */
  start(t: number, bytes: number, pages: number, downtimeLimit: number): void {
    this.iterStart = t;
    this.iterBytes = bytes;
    this.iterPages = pages;
    this.periodStart = t;
    this.expectedDowntime = downtimeLimit;
  }

  /** QEMU's migration_update_counters at the end of a window. */
  updateCounters(t: number, bytes: number, pages: number, dirtyPages: number, downtimeLimit: number): void {
    const transferred = bytes - this.iterBytes;
    const spent = t - this.iterStart;
    const bandwidth = transferred / spent; // bytes per ms
    this.thresholdSize = bandwidth * downtimeLimit;
    this.mbps = (transferred * 8) / (spent / 1000) / 1e6;
    this.pagesPerSecond = (pages - this.iterPages) / (spent / 1000);
    if (this.dirtyPagesRate && transferred > 10000 && bandwidth > 0) {
      this.expectedDowntime = Math.round((dirtyPages * TP) / bandwidth);
    }
    this.iterStart = t;
    this.iterBytes = bytes;
    this.iterPages = pages;
  }

  /**
   * Accounts `newly` dirty pages of a bitmap sync. When a rate period ended,
   * computes the period figures and returns (bytes transferred, bytes
   * dirtied) of the period for the auto-converge trigger; else undefined.
   */
  onSync(t: number, newly: number, bytes: number, saver: RamSaver, xbzrle: boolean): { xfer: number; dirty: number } | undefined {
    this.numDirtyPagesPeriod += newly;
    if (t <= this.periodStart + RATE_PERIOD_MS) return undefined;
    const period = { xfer: bytes - this.bytesXferPrev, dirty: this.numDirtyPagesPeriod * TP };
    this.dirtyPagesRate = Math.floor((this.numDirtyPagesPeriod * 1000) / (t - this.periodStart));
    if (xbzrle) this.updateXbzrleRates(saver);
    this.periodStart = t;
    this.numDirtyPagesPeriod = 0;
    this.bytesXferPrev = bytes;
    return period;
  }

  private updateXbzrleRates(saver: RamSaver): void {
    const pageCount = saver.counters.targetPageCount - this.pageCountPrev;
    if (pageCount === 0) return;
    this.pageCountPrev = saver.counters.targetPageCount;
    const x = saver.xbzrle;
    x.cacheMissRate = (x.cacheMiss - this.xbzrleMissPrev) / pageCount;
    this.xbzrleMissPrev = x.cacheMiss;
    const unencoded = (x.pages - this.xbzrlePagesPrev) * TP;
    const encoded = x.bytes - this.xbzrleBytesPrev;
    x.encodingRate = x.pages === this.xbzrlePagesPrev || encoded === 0 ? 0 : unencoded / encoded;
    this.xbzrlePagesPrev = x.pages;
    this.xbzrleBytesPrev = x.bytes;
  }
}
