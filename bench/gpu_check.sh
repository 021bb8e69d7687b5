#!/usr/bin/env bash
# The training benchmark on a CUDA machine, AMP off and on (bf16, fp16): bench/train.py's table
# for each, in well under 5 minutes on a current GPU. Put the figures in bench/RESULTS.md with
# the date and the device.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup >/dev/null
.venv/bin/python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
PY
for amp in off bf16 fp16; do
  echo "== amp $amp"
  timeout 120 .venv/bin/python bench/train.py --device cuda --amp "$amp" --epochs 2 --skip-recipe 2>&1 \
    | grep -v -e ' INFO ' -e '^\[' || true
done
