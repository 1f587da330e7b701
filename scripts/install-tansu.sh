#!/usr/bin/env bash
# Installs tansu (a Kafka-protocol broker in Rust) for the Kafka tests, once: the binary is cached
# in ~/.cache/spotbatch/tansu-VERSION (about 13 minutes to build on 2 cores the first time).
# Prints the binary's path.
set -euo pipefail
VERSION=0.6.0
CACHE="${SPOTBATCH_CACHE:-$HOME/.cache/spotbatch}/tansu-$VERSION"
BIN="$CACHE/bin/tansu"
if [ ! -x "$BIN" ]; then
  echo "building tansu $VERSION into $CACHE (first time only; about 13 minutes on 2 cores)" >&2
  cargo install --quiet --locked tansu --version "$VERSION" --features dynostore,libsql --root "$CACHE" >&2 \
    || cargo install --quiet tansu --version "$VERSION" --features dynostore,libsql --root "$CACHE" >&2
fi
echo "$BIN"
