#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) with cargo-fuzz and libFuzzer for FUZZ_SECONDS
# each (default 120), then prints executions, executions per second and coverage per target.
# Called by `make fuzz`.
#
# Toolchain: the nightly toolchain when one is installed (`rustup toolchain list`), so that the
# targets run under AddressSanitizer; without one, the stable toolchain with `--sanitizer none`
# (coverage-guided all the same; what only ASan sees in unsafe code goes unseen), and it says so.
# Nothing is downloaded but cargo-fuzz itself, from crates.io, when `cargo fuzz` is missing.
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET, read-only here) and a working
# corpus under .cache/fuzz/ (kept between runs). Limits per target: -rss_limit_mb (FUZZ_RSS_MB,
# default 2048) and -timeout (FUZZ_TIMEOUT, default 10 s per input): an input over either is a
# failure like a crash. Crashes go to fuzz/artifacts/TARGET/; a crash's input belongs, once fixed,
# in fuzz/corpus/TARGET/ (named regression-*), where `make test` replays it.
#
# FUZZ_TARGETS="a b" runs only those; FUZZ_SANITIZER=none|address overrides the sanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-120}
rss_mb=${FUZZ_RSS_MB:-2048}
timeout_s=${FUZZ_TIMEOUT:-10}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=+nightly
  sanitizer=${FUZZ_SANITIZER:-address}
else
  toolchain=
  sanitizer=none
  echo "scripts/fuzz.sh: no nightly toolchain installed: fuzzing on stable with --sanitizer none" >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=${FUZZ_TARGETS:-$(ls fuzz/fuzz_targets | sed 's/\.rs$//')}
# -a: debug assertions and overflow checks on (an overflow on hostile numbers is a crash).
flags=(--fuzz-dir fuzz --features libfuzzer --sanitizer "$sanitizer" -a)
echo "fuzzing with cargo ${toolchain:-(stable)} fuzz, sanitizer $sanitizer, ${seconds}s per target"
cargo $toolchain fuzz build "${flags[@]}"
# The targets are run as built (`cargo fuzz run` would rebuild the crate graph with other flags to
# print a crashing input, minutes per crash on two cores).
bin_dir="${CARGO_TARGET_DIR:-target}/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p .cache/fuzz
failed=()
summary=()
for t in $targets; do
  mkdir -p ".cache/fuzz/corpus/$t"
  log=".cache/fuzz/$t.log"
  echo "--- $t (${seconds}s) ---"
  # Tokens of the target's format (field names, keywords, edge numbers) help mutations along.
  dict=()
  if [ -f "fuzz/dicts/$t.dict" ]; then dict=(-dict="fuzz/dicts/$t.dict"); fi
  set +e
  mkdir -p "fuzz/artifacts/$t"
  "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" \
    -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" -timeout="$timeout_s" \
    -print_final_stats=1 "${dict[@]}" ".cache/fuzz/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  tail -n 4 "$log"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
  corp=$(find ".cache/fuzz/corpus/$t" "fuzz/corpus/$t" -type f | wc -l)
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    outcome="FAILED (rc $rc): $(grep -m1 -E '^==[0-9]+== ERROR|panicked at|^SUMMARY' "$log" || echo 'see log')"
  else
    outcome=ok
  fi
  summary+=("$(printf '%-16s %12s %9s %7s %7s %7s %8s  %s' "$t" "$runs" "$rate" "$cov" "$ft" "$corp" "$rss" "$outcome")")
done
echo
echo "=== fuzzing summary (${seconds}s per target, sanitizer $sanitizer; logs in .cache/fuzz/) ==="
printf '%-16s %12s %9s %7s %7s %7s %8s  %s\n' target execs execs/s cov ft corpus rss_mb outcome
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" != 0 ]; then
  echo "failed: ${failed[*]} (inputs in fuzz/artifacts/TARGET/; rerun one: $bin_dir/TARGET FILE, or cargo $toolchain fuzz run ${flags[*]} TARGET FILE)" >&2
  exit 1
fi
