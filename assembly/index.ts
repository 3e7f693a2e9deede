// Placeholder; the hot path (XBZRLE, zero test, dirty bitmaps) lands here.
export function version(): i32 { return 1; }
