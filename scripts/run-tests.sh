#!/usr/bin/env bash
# Run the test suite against real services: start the test PostgreSQL server and, as root when
# no Slurm controller responds, a local Slurm cluster; run pytest; stop what this script started.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The test Slurm's GPUs are fake devices: let workers that hold them train on CPU.
export HPC_TUNE_ALLOW_CPU=1

started_pg=0
started_slurm=0
cleanup() {
  if [ "$started_slurm" = 1 ]; then bash scripts/local-slurm.sh stop || true; fi
  if [ "$started_pg" = 1 ]; then bash scripts/test-postgres.sh stop || true; fi
}
trap cleanup EXIT

if [ -z "${HPC_TUNE_TEST_STORAGE:-}" ]; then
  bash scripts/test-postgres.sh start
  started_pg=1
  eval "$(bash scripts/test-postgres.sh env)"
fi
# A Slurm controller the caller already reaches wins; otherwise root starts the local test cluster.
if ! timeout 15 scontrol ping >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  slurm_status=0
  bash scripts/local-slurm.sh start || slurm_status=$?
  if [ "$slurm_status" = 0 ]; then
    started_slurm=1
    eval "$(bash scripts/local-slurm.sh env)"
  elif [ "$slurm_status" != 3 ]; then
    exit "$slurm_status"   # 3 = packages unavailable: the Slurm tests skip
  fi
fi

# The report test opens the plots in headless Chromium; as root, install it when missing.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt_log=/tmp/hpc-tune-chromium-apt.log
  echo "run-tests: installing chromium-headless-shell (log in $apt_log)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y -qq --no-install-recommends chromium-headless-shell \
      >"$apt_log" 2>&1 \
    || { timeout 300 apt-get update -qq >>"$apt_log" 2>&1 \
         && timeout 600 apt-get install -y -qq --no-install-recommends chromium-headless-shell \
              >>"$apt_log" 2>&1; } \
    || echo "run-tests: chromium-headless-shell could not be installed; see $apt_log"
fi

# Static checks first: they take seconds and catch what the tests would reach late.
.venv/bin/ruff check tuner hpc tests benchmarks
.venv/bin/mypy tuner hpc
.venv/bin/python -m pytest "$@"
