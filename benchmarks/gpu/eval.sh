#!/usr/bin/env bash
# Call 3 on the device machine (after train.sh, same warm machine): held-out accuracy and scan speed.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
adapter=${1:-/tmp/adapter}
log=$OUT/logs.txt
pkgs=$(sed -e 's/#.*//' -e '/^\s*$/d' -e 's/^\s*/\/tmp\/work\/corpus\//' src/loralint/data/corpus/eval.txt)
echo "== eval" | tee -a $log
timeout 300 python3 -m loralint eval $pkgs --adapter "$adapter" --no-cache --format json --output $OUT/eval.json \
  --plot $OUT/eval.png >> $log 2>&1
echo "eval rc=$?" | tee -a $log
python3 -m loralint eval $pkgs --adapter "$adapter" 2>&1 | tail -30 | tee -a $log
echo "== scan_speed" | tee -a $log
timeout 200 python3 benchmarks/scan_speed.py --adapter "$adapter" --out $OUT/scan_speed.json >> $log 2>&1
tail -20 $log
