#!/usr/bin/env bash
# Run the benchmarks against one PostgreSQL: the test server (started here unless
# HPC_TUNE_TEST_STORAGE names one), then print the figures and where the JSON went.
# Extra arguments go to benchmarks/scheduling.py (for example --workers 1 4 16 32).
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

started_pg=0
cleanup() {
  if [ "$started_pg" = 1 ]; then bash scripts/test-postgres.sh stop || true; fi
}
trap cleanup EXIT
if [ -z "${HPC_TUNE_TEST_STORAGE:-}" ]; then
  bash scripts/test-postgres.sh start
  started_pg=1
  eval "$(bash scripts/test-postgres.sh env)"
fi

echo "== Scheduling: hpc-tune workers, plain Optuna workers, batch-synchronous loop"
.venv/bin/python benchmarks/scheduling.py --storage "$HPC_TUNE_TEST_STORAGE" "$@"
echo "== status on studies built by bulk insert"
.venv/bin/python benchmarks/status_scale.py --storage "$HPC_TUNE_TEST_STORAGE"
