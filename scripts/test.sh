#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: set up (idempotent), build every crate
# (the plugin dylibs and test fixture libraries included), then test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
scripts/setup.sh
cargo fmt --all -- --check
# The integration tests load the plugin dylibs from target/release: build them first.
cargo build --release --locked --workspace
cargo test --release --locked --workspace --no-fail-fast "$@"
echo "[test] all passed in $(( $(date +%s) - start )) s" >&2
