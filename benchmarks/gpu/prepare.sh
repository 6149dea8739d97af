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
