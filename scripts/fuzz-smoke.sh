#!/usr/bin/env bash
# Builds and runs the gpuaas-proto frame decoder fuzz target for a bounded time.
#
#   scripts/fuzz-smoke.sh               # 60 seconds
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags); without one it says so
# and exits 0, so that it can run unconditionally in CI. Installs cargo-fuzz if it is missing.
# A crash leaves its input under proto/fuzz/artifacts/frame_decoder/ and exits non-zero.
set -euo pipefail

readonly TARGET=frame_decoder
readonly SECONDS_TO_RUN="${FUZZ_SECONDS:-60}"

if ! [[ "$SECONDS_TO_RUN" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz-smoke: FUZZ_SECONDS must be a positive whole number of seconds, got '$SECONDS_TO_RUN'" >&2
    exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root/proto"

if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz-smoke: skipped: no nightly toolchain (install one with 'rustup toolchain install nightly')"
    exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is missing, installing it"
    cargo +nightly install cargo-fuzz --locked --version 0.13.2
fi

echo "fuzz-smoke: $(cargo +nightly fuzz --version), $(rustup run nightly rustc --version)"
cargo +nightly fuzz build "$TARGET"
echo "fuzz-smoke: running $TARGET for ${SECONDS_TO_RUN}s"
cargo +nightly fuzz run "$TARGET" -- -max_total_time="$SECONDS_TO_RUN"
echo "fuzz-smoke: $TARGET ran ${SECONDS_TO_RUN}s without a failure"
