/**
 * The VMDESCRIPTION JSON the source sends after EOF (SPEC §1.7), in QEMU's
 * text layout (", " and ": " separators).
 */

/**
 * The vmdesc JSON text for the given devices: old-style "data" buffers unless a description is given.
 */
export function vmdescJson(
  devices: readonly { idstr: string; instanceId: number; payload: Uint8Array; vmdesc?: Record<string, unknown> }[],
): string {
  const devs = devices.map((d) =>
    d.vmdesc
      ? { name: d.idstr, instance_id: d.instanceId, ...d.vmdesc }
      : {
          name: d.idstr,
          instance_id: d.instanceId,
          size: d.payload.length,
          fields: [{ name: 'data', size: d.payload.length, type: 'buffer' }],
        },
  );
  return qemuJson({ page_size: 4096, devices: devs });
}

function qemuJson(v: unknown): string {
  if (Array.isArray(v)) return '[' + v.map(qemuJson).join(', ') + ']';
  if (v !== null && typeof v === 'object') {
    return (
      '{' +
      Object.entries(v as Record<string, unknown>)
        .map(([k, x]) => JSON.stringify(k) + ': ' + qemuJson(x))
        .join(', ') +
      '}'
    );
  }
  return JSON.stringify(v);
}
