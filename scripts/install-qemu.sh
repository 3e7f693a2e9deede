#!/usr/bin/env bash
# Installs Debian's qemu-system-x86 (QEMU 7.2) when qemu-system-x86_64 is missing.
# Interop tests need it; CI runs this on a fresh machine. Idempotent.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-qemu: qemu-system-x86_64 is missing and we are not root; run: sudo apt-get install -y --no-install-recommends qemu-system-x86" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -1
