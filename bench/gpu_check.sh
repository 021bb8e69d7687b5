#!/usr/bin/env bash
# The GPU check: the engine's CUDA tests (the distributed nccl path among them), then
# bench/train.py's table with AMP off and on (bf16, fp16), and bench/distributed.py's scaling from 1
# GPU to all present, in well under 5 minutes on a current GPU. Put the figures in
# bench/RESULTS.md with the date and the device.
#
# BENCH_PYTHON names an interpreter that already has the project's dependencies (a machine's own
# CUDA build of torch, say); without it the project's venv is set up and used.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BENCH_PYTHON:-}" ]; then
  make --no-print-directory setup >/dev/null
  BENCH_PYTHON=.venv/bin/python
fi
EPOCHS=${BENCH_EPOCHS:-5}
"$BENCH_PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
PY
echo "== CUDA tests"
tests_failed=0
"$BENCH_PYTHON" -m pytest -q -p no:cacheprovider tests/models/test_cuda.py || tests_failed=1  # benchmarks still run
for amp in off bf16 fp16; do
  echo "== amp $amp"
  recipe=--skip-recipe
  [ "$amp" = off ] && recipe=  # the recipe runs on the CPU whatever the AMP setting: once is enough
  timeout 240 "$BENCH_PYTHON" -m bench.train --device cuda --amp "$amp" --epochs "$EPOCHS" $recipe || true
done
echo "== distributed: 1 GPU against all"
timeout 240 "$BENCH_PYTHON" -m bench.distributed --device cuda --skip-service --epochs 2 || true
exit "$tests_failed"
