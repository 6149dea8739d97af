#!/usr/bin/env bash
# Call 1 on the device machine (carry .whl .carry/smollm2-a).
set -uo pipefail
mkdir -p /tmp/smol && cp .carry/smollm2-a/part00 /tmp/smol/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
PYTHONPATH=/tmp/site python3 -c "import torch, transformers, peft, trl, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "import flash_attn" 2>/dev/null && echo "flash_attn: yes" || echo "flash_attn: no"
