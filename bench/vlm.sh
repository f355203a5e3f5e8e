#!/usr/bin/env bash
# The vlm plugin beside transformers, same weights, same image, one run: time to first
# token for a chat prompt with one 512×512 photograph (scikit-image's astronaut: 17 frames,
# 1088 image tokens under SmolVLM's processor) and greedy decode tok/s, on
# SmolVLM-256M-shaped random float32 weights (no VLM weights ship in a registry; the
# shapes decide the speed). Needs target/release (cargo build --release --workspace) and
# scripts/setup.sh (the photograph); installs torch 2.15.0 + transformers 5.24.0 into the
# cache on first use.
#   bench/vlm.sh [NEW_TOKENS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/common.sh
N=${1:-32}
PEER=${VLM_PEER_VENV:-$CACHE/vlm-peer-venv}
if ! "$PEER/bin/python" -c "import torch, transformers, PIL" 2>/dev/null; then
  echo "[bench] installing torch 2.15.0, transformers 5.24.0, pillow 13.0.0 into $PEER" >&2
  python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q "torch==2.15.0" "transformers==5.24.0" "pillow==13.0.0"
fi
MODEL=$CACHE/derived/smolvlm-256m-shaped
[ -f "$MODEL/model.safetensors" ] || "$PEER/bin/python" bench/vlm_peer.py make "$MODEL"
IMAGE=$CACHE/models/skimage-data/astronaut.png
quiet_guard
REG=$(mktemp --suffix .toml)
trap 'rm -f "$REG"' EXIT
printf '[[models]]\nid = "smolvlm-shaped"\nkind = "vlm"\narchitecture = "idefics3"\nsource = { path = "%s" }\n' "$MODEL" > "$REG"
# One process: a warm-up, then three timed runs (medians).
OURS=$(target/release/mlxengine --registry "$REG" bench --model smolvlm-shaped --image "$IMAGE" \
  --prompt "Describe this image." --max-tokens "$N" --runs 3 --json 2>/dev/null |
  python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'ttft_ms': r['ttft_ms']['median'], 'decode_tps': r['decode_tps']['median'], 'prompt_tokens': r['prompt_tokens']}))")
PEER_OUT=$(THREADS=$THREADS "$PEER/bin/python" bench/vlm_peer.py run "$MODEL" "$IMAGE" "$N")
python3 - "$OURS" "$PEER_OUT" "$BENCH_FLAG" <<'PY'
import json, sys
o, p, flag = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
print(f"vlm, SmolVLM-256M shapes, float32, one 512x512 image ({o['prompt_tokens']} prompt tokens; transformers {p['prompt_tokens']}) {flag}")
print(f"{'':22}{'mlxengine':>12}{'transformers':>14}{'ratio':>8}")
print(f"{'time to first token':22}{o['ttft_ms']:>10.0f}ms{p['ttft_ms']:>12.0f}ms{p['ttft_ms'] / o['ttft_ms']:>7.2f}x")
print(f"{'decode tok/s':22}{o['decode_tps']:>12.1f}{p['decode_tps']:>14.1f}{o['decode_tps'] / p['decode_tps']:>7.2f}x")
PY
