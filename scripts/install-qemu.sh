#!/usr/bin/env bash
# Installs Debian's qemu-system-x86 (QEMU 7.2) when qemu-system-x86_64 is missing,
# and gcc (which builds the 32-bit test guest, test/guest/) when gcc is missing.
# Interop tests need both; CI runs this on a fresh machine. Idempotent.
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-qemu: missing ${need[*]} and we are not root; run: sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
qemu-system-x86_64 --version | head -1
