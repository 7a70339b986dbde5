#!/usr/bin/env bash
# Run every benchmark of docs/benchmarks.md in one go and print their figures and the JSON
# files they wrote (benchmarks/results/). The scheduling, scale and overhead benchmarks use the
# test PostgreSQL (started here unless HPC_TUNE_TEST_STORAGE names one); the connection
# benchmark starts a server of its own, left at max_connections=100, on port 55433, and stops it.
# Extra arguments go to benchmarks/scheduling.py (for example --workers 1 4 16 32).
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
PYTHON=.venv/bin/python
BENCH_PG=(env HPC_TUNE_TEST_PGPORT=55433 HPC_TUNE_TEST_PGPREFIX=/tmp/hpc-tune-bench-pg
  HPC_TUNE_TEST_PGMAXCONN=100)

started_pg=0
started_bench_pg=0
cleanup() {
  if [ "$started_pg" = 1 ]; then bash scripts/test-postgres.sh stop || true; fi
  if [ "$started_bench_pg" = 1 ]; then "${BENCH_PG[@]}" bash scripts/test-postgres.sh stop || true; fi
}
trap cleanup EXIT
if [ -z "${HPC_TUNE_TEST_STORAGE:-}" ]; then
  bash scripts/test-postgres.sh start
  started_pg=1
  eval "$(bash scripts/test-postgres.sh env)"
fi
started=$(date +%s)

echo "== Scheduling: hpc-tune workers, plain Optuna workers, batch-synchronous loop"
$PYTHON benchmarks/scheduling.py --storage "$HPC_TUNE_TEST_STORAGE" "$@"

echo "== 128 workers against a server left at max_connections=100"
"${BENCH_PG[@]}" bash scripts/test-postgres.sh start
started_bench_pg=1
$PYTHON benchmarks/connections.py \
  --storage postgresql+psycopg2://postgres@127.0.0.1:55433/hpc_tune_test --workers 128
"${BENCH_PG[@]}" bash scripts/test-postgres.sh stop
started_bench_pg=0

echo "== status on studies built by bulk insert"
$PYTHON benchmarks/status_scale.py --storage "$HPC_TUNE_TEST_STORAGE"

echo "== report and finalize on studies built by bulk insert"
$PYTHON benchmarks/report_scale.py --storage "$HPC_TUNE_TEST_STORAGE"

echo "== Real EDS-NLP trials: time outside train(), hpc-tune beside edsnlp.tune"
make --no-print-directory model
$PYTHON benchmarks/real_overhead.py --storage "$HPC_TUNE_TEST_STORAGE"

echo "make bench: $(($(date +%s) - started)) s in all (commit $(git rev-parse --short HEAD))"
