#!/usr/bin/env bash
# Runs every test with the services they need. Called by `make test` (after scripts/env.sh has set
# ORT_DYLIB_PATH and SPOTBATCH_PYTHON); services started here are stopped on exit, and their logs
# are printed if a test fails. The multi-process end-to-end tests (workers, drains, chaos,
# partition moves) run one at a time after the rest: they measure hand-over times and must not
# fight over the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORT_DYLIB_PATH:?run through make test}"
: "${SPOTBATCH_PYTHON:?run through make test}"
PARALLEL=(notices deploy e2e_demo e2e_bad_input)
SERIAL=(e2e_resume e2e_drain e2e_sqs e2e_coordinator e2e_steal e2e_metrics e2e_dashboard e2e_kafka e2e_chaos)
# Run with --nocapture so that GPU checks skipped on a machine without a GPU say so in the log.
GPU=(gpu)
# Every end-to-end test file must be in one of the two lists, so none is silently left out.
for f in tests/*.rs; do
  name=$(basename "$f" .rs)
  if [[ ! " ${PARALLEL[*]} ${SERIAL[*]} ${GPU[*]} " =~ " $name " ]]; then
    echo "scripts/test.sh: tests/$name.rs is in none of PARALLEL, SERIAL, GPU" >&2
    exit 1
  fi
done
# The KEDA and Karpenter CRD schemas for tests/deploy.rs (kubernetes-validate has none), pinned by
# scripts/crds/package-lock.json.
if [ ! -d scripts/crds/node_modules ]; then npm ci --prefix scripts/crds --silent --no-audit --no-fund; fi
# NVRTC, CUDA 13's run-time compiler (from NVIDIA's PyPI wheel; it needs no GPU), so that every
# test run compiles the GPU preprocessing kernels' source; SPOTBATCH_TEST_NVRTC makes that check
# required rather than skipped.
NVRTC_LIB=$("$SPOTBATCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/lib
if [ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
  "$SPOTBATCH_PYTHON" -m pip install -q --disable-pip-version-check 'nvidia-cuda-nvrtc==13.5.37'
fi
export LD_LIBRARY_PATH=$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SPOTBATCH_TEST_NVRTC=1
cargo build --workspace --all-targets --locked
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh start)"
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
echo "moto (SQS, S3): $SPOTBATCH_TEST_SQS_ENDPOINT; tansu (Kafka): $SPOTBATCH_TEST_KAFKA_BROKERS"
args() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
if ! { cargo test --workspace --exclude spotbatch --locked -- --test-threads=2 &&
       cargo test -p spotbatch --locked $(args "${PARALLEL[@]}") -- --test-threads=2 &&
       cargo test -p spotbatch --locked $(args "${GPU[@]}") -- --test-threads=1 --nocapture &&
       cargo test -p spotbatch --locked $(args "${SERIAL[@]}") -- --test-threads=1; }; then
  echo "--- service logs (tail) ---"
  tail -n 50 .cache/services/*.log || true
  exit 1
fi
