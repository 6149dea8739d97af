#!/usr/bin/env bash
# On the workstation: everything lease.sh's calls carry, built into git-ignored folders (about 4 minutes on 2
# cores): the wheels the GPU machine lacks, the base model in two halves, each rule's dataset (the 78 train
# packages; windows, snippets, clean snippets) and the held-out packages with their lock file (so the GPU
# machine's eval finds them without a network), and the shipped adapters to warm-start from.
#   .whl .carry/smollm2-a          call 1 (setup)
#   .carry/smollm2-b gpu-carry/c2  call 2 (rules: train_speed, naming)          naming + else-return data, eval corpus
#   gpu-carry/c3 gpu-carry/c5      call 3 (predicate: else-return, predicate)   predicate data, warm adapters
# The shipped adapters must leave the tree for the calls (64 MiB a call): `git rm -r -q --cached
# src/loralint/adapters` and `/src/loralint/adapters/` in .git/info/exclude; afterwards `git reset -q HEAD --
# src/loralint/adapters` and remove that line again.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
LORALINT=${LORALINT:-loralint}
PY=${PY:-python3}
if [ "${1:-}" = light ]; then
  # c16: the light set of scan_speed_h100_overlap.json / decode_steps.json (11 packages; their first 1,700 files
  # are 6,214 windows, ~3.7 a file, against ~14.7 for corpus6k's first 1,700), for lease.sh scan5
  rm -rf .cache/gpu-carry/c16; mkdir -p .cache/gpu-carry/c16
  tar -C .cache -cf - $(cd .cache && ls -d corpus/semver@* corpus/joi@* corpus/chokidar@* corpus/ejs@* \
    corpus/nunjucks@* corpus/terser@* corpus/mysql@* corpus/passport@* corpus/lodash@* corpus/ramda@* \
    corpus/kafkajs@*) | xz -T0 -6 > .cache/gpu-carry/c16/light.tar.xz
  du -sh .cache/gpu-carry/c16
  exit 0
fi
if [ "${1:-}" = lease3 ]; then
  bash ../shared/tools/gpu-wheels.sh liger-kernel==0.8.5 peft==0.21.2
  gguf=$($PY -c "from loralint import models; print(models.embedded_gguf())")
  rm -rf .carry/ga .carry/gb .cache/gpu-carry/c14 .cache/gpu-carry/c15a .cache/gpu-carry/c15b
  mkdir -p .carry/ga .carry/gb .cache/gpu-carry/c14 .cache/gpu-carry/c15a .cache/gpu-carry/c15b /tmp/prep-split
  split -b 55000000 -d "$gguf" /tmp/prep-split/part && mv /tmp/prep-split/part00 .carry/ga/ && mv /tmp/prep-split/part01 .carry/gb/
  rm -rf /tmp/prep-warm && mkdir -p /tmp/prep-warm/else-return
  cp src/loralint/adapters/else-return/adapter_config.json /tmp/prep-warm/else-return/
  $PY -c 'import sys, torch; from safetensors.torch import load_file, save_file
save_file({k: v.to(torch.bfloat16) for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])' \
    src/loralint/adapters/else-return/adapter_model.safetensors /tmp/prep-warm/else-return/adapter_model.safetensors
  tar -C /tmp/prep-warm -cf - else-return | xz -T0 -6 > .cache/gpu-carry/c14/warm-er.tar.xz
  # else-return's windows dataset as this tree builds it (its own windows; its near-miss look-alikes kept first)
  [ -f .cache/ds-else-return-lease3/train.jsonl ] || $LORALINT dataset build --rule else-return --train train \
    --eval eval --kinds window,snippet,clean --corpus .cache/corpus --out .cache/ds-else-return-lease3 -q -j 0
  xz -T0 -6 -c .cache/ds-else-return-lease3/train.jsonl > .cache/gpu-carry/c14/else-return-train.jsonl.xz
  tar -C .cache -cf - corpus/corpus.lock.json \
    $(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/corpus\//' src/loralint/data/corpus/eval.txt) \
    | xz -T0 -6 > .cache/gpu-carry/c14/corpus.tar.xz
  tar -C src/loralint/adapters -cf - predicate | xz -T0 -6 > .cache/gpu-carry/c15a/ad.tar.xz
  $PY -c 'import sys; sys.path.insert(0, "benchmarks"); from pathlib import Path; from scan_speed import corpus_files_all
root = Path(".cache").resolve()
for p in corpus_files_all(Path(".cache/corpus"), 6000): print(Path(p).resolve().relative_to(root))' > /tmp/prep-6k.txt
  tar -C .cache -cf - -T /tmp/prep-6k.txt | xz -T0 -6 > .cache/gpu-carry/c15b/corpus6k.tar.xz
  du -sh .whl .carry/ga .carry/gb .cache/gpu-carry/c14 .cache/gpu-carry/c15a .cache/gpu-carry/c15b
  exit 0
fi
$LORALINT corpus fetch train eval --dest .cache/corpus
for r in predicate else-return naming; do
  $LORALINT dataset build --rule "$r" --train train --eval eval --kinds window,snippet,clean --corpus .cache/corpus \
    --out ".cache/ds-$r" -q -j 0
done
rm -rf .cache/gpu-carry; mkdir -p .cache/gpu-carry/c2 .cache/gpu-carry/c3 .cache/gpu-carry/c5
for r in naming else-return; do xz -T0 -6 -c ".cache/ds-$r/train.jsonl" > ".cache/gpu-carry/c2/$r-train.jsonl.xz"; done
tar -C .cache -cf - corpus/corpus.lock.json \
  $(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/corpus\//' src/loralint/data/corpus/eval.txt) \
  | xz -T0 -6 > .cache/gpu-carry/c2/corpus.tar.xz
xz -T0 -6 -c .cache/ds-predicate/train.jsonl > .cache/gpu-carry/c3/predicate-train.jsonl.xz
# predicate whole (the eval's fallback when its training fails), else-return's weights (its warm start)
tar -C src/loralint/adapters -cf .cache/gpu-carry/c5/warm.tar predicate else-return/adapter_model.safetensors \
  else-return/adapter_config.json
bash ../shared/tools/gpu-wheels.sh liger-kernel==0.8.5 peft==0.21.2
bash ../shared/tools/smollm2-carry.sh
du -sh .whl .carry/* .cache/gpu-carry/*/*

# `prepare.sh lease3` (2026-12-07, fourth session): the carries of setup / erwarm / scan2 / scan3 alone (the corpus
# must be fetched first: `loralint corpus fetch train eval --dest .cache/corpus`; LORALINT=.venv/bin/loralint
# PY=.venv/bin/python from a checkout). The lease it is for, in order, on one warm machine:
#   SKIP_CUDA_TESTS=1 lease.sh setup (carry .whl .carry/ga)
#   VARIANTS="nm8:0.0002:350:near-miss=8,else-if-chain=2 nm16:0.0003:450:near-miss=16,else-if-chain=4" \
#     lease.sh erwarm (carry .carry/gb c14)
#   lease.sh scan2 (carry c15a c15b)        1,700 files the gpu engine alone, 5,000 both engines
#   lease.sh scan3 (no carry)               1,700 files: bf16's noise floor (the reference twice), float16
#   .whl .carry/ga            setup   (wheels; the base's first 55 MB)
#   .carry/gb gpu-carry/c14   erwarm  (the base's last 43 MB; the shipped else-return adapter in bf16, its windows
#                                      dataset, the held-out packages)
#   gpu-carry/c15a c15b       scan2   (the shipped predicate adapter; the first 6,000 corpus files of scan_speed)
