#!/usr/bin/env bash
# Runs every test with the services they need. Called by `make test` (after scripts/env.sh has set
# ORT_DYLIB_PATH and SPOTBATCH_PYTHON); services started here are stopped on exit, and their logs
# are printed if a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORT_DYLIB_PATH:?run through make test}"
: "${SPOTBATCH_PYTHON:?run through make test}"
cargo build --workspace --all-targets --locked
trap 'scripts/services.sh stop' EXIT
eval "$(scripts/services.sh start)"
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
echo "moto (SQS, S3): $SPOTBATCH_TEST_SQS_ENDPOINT; tansu (Kafka): $SPOTBATCH_TEST_KAFKA_BROKERS"
if ! cargo test --workspace --locked -- --test-threads=2; then
  echo "--- service logs (tail) ---"
  tail -n 50 .cache/services/*.log || true
  exit 1
fi
