#!/usr/bin/env bash
# The main job on a fresh machine: set up (idempotent), build the host and plugins, then
# embed a few sentences with the default embedding model through the embed plugin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked -p mlxengine -p mlxengine-embed
bin=target/release/mlxengine
"$bin" plugins
echo
"$bin" embed --model all-minilm-l6-v2 \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The girl is carrying a baby." \
  "${@:-A child holds an infant.}"
