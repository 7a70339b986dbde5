#!/usr/bin/env bash
# Run the test suite against real services: start the test PostgreSQL server, run pytest,
# stop the server again if this script started it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

started_pg=0
if [ -z "${HPC_TUNE_TEST_STORAGE:-}" ]; then
  bash scripts/test-postgres.sh start
  started_pg=1
  eval "$(bash scripts/test-postgres.sh env)"
fi
cleanup() {
  if [ "$started_pg" = 1 ]; then bash scripts/test-postgres.sh stop || true; fi
}
trap cleanup EXIT

# Static checks first: they take seconds and catch what the tests would reach late.
.venv/bin/ruff check tuner hpc tests benchmarks
.venv/bin/mypy tuner hpc
.venv/bin/python -m pytest "$@"
