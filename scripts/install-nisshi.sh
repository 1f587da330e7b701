#!/usr/bin/env bash
# Installs nisshi (née tansu), a Kafka-protocol broker in Rust, for the Kafka tests, once: the
# binary is cached in ~/.cache/spotbatch/nisshi-VERSION. Only its `dynostore` storage engine (which
# serves memory://) is built: 26 minutes on 2 cores the first time (1577 s, measured with rustc
# 1.97-nightly). nisshi 0.8.1's locked dependencies (rama 0.4) need rustc 1.96 or later: the default
# toolchain if it is that new, else an installed nightly, else rustup installs 1.96.0 (minimal
# profile). Prints the binary's path.
set -euo pipefail
VERSION=0.8.1
NEED=1.96.0
CACHE="${SPOTBATCH_CACHE:-$HOME/.cache/spotbatch}/nisshi-$VERSION"
BIN="$CACHE/bin/nisshi"
# Whether `rustc [+TOOLCHAIN]` is at least $NEED.
new_enough() {
  local v
  v=$(rustc "$@" --version 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$v" ] && printf '%s\n%s\n' "$NEED" "${v%%-*}" | sort -V -C
}
if [ ! -x "$BIN" ]; then
  if new_enough; then
    toolchain=()
  elif new_enough +nightly; then
    toolchain=(+nightly)
  else
    echo "installing Rust $NEED for nisshi (its dependencies need it)" >&2
    rustup toolchain install --profile minimal "$NEED" >&2
    toolchain=("+$NEED")
  fi
  echo "building nisshi $VERSION into $CACHE (first time only; about 26 minutes on 2 cores)" >&2
  cargo "${toolchain[@]}" install --quiet --locked nisshi --version "$VERSION" \
    --no-default-features --features dynostore --root "$CACHE" >&2
fi
echo "$BIN"
