#!/usr/bin/env bash
# On the workstation: build what the GPU calls carry (dataset, held-out packages) into .cache/gpu-carry/.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
loralint corpus fetch train eval --dest .cache/corpus
loralint dataset build --train train --eval eval --kinds window,snippet,clean --out .cache/gpu-ds -q
mkdir -p .cache/gpu-carry
tar -C .cache -cf - gpu-ds | xz -T0 -6 > .cache/gpu-carry/ds.tar.xz
tar -C .cache -cf - $(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/corpus\//' src/loralint/data/corpus/eval.txt) \
  | xz -T0 -6 > .cache/gpu-carry/evalcorpus.tar.xz
bash ../shared/tools/gpu-wheels.sh liger-kernel==0.8.5 peft==0.21.2
bash ../shared/tools/smollm2-carry.sh
