#!/usr/bin/env bash
# Runs every test with the services they need. Called by `make test` (after scripts/env.sh has set
# ORT_DYLIB_PATH and SPOTBATCH_PYTHON); services started here are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ORT_DYLIB_PATH:?run through make test}"
: "${SPOTBATCH_PYTHON:?run through make test}"
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=2
