#!/usr/bin/env bash
# Installs the system packages GPUaaS needs to build and test on a fresh Debian/Ubuntu machine.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(build-essential pkg-config ca-certificates procps util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo (Rust 1.95+) is required: https://rustup.rs" >&2; exit 1; }
echo "system packages ok"
