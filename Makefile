# The two commands: `make demo` and `make test`. Both set up what they need (.venv with ONNX
# Runtime's library from PyPI) on a clean machine.
SHELL := /bin/bash
ENV := source scripts/env.sh

.PHONY: demo test lint bench bench-gpu bench-sqs bench-chaos bench-steal bench-fleet clean

demo:
	@$(ENV) && cargo build --release --locked
	@rm -rf examples/digits/out examples/digits/queue.db examples/digits/queue.db-* examples/digits/queue.db.lock
	@$(ENV) && target/release/spotbatch validate examples/digits/job.toml
	@$(ENV) && target/release/spotbatch run examples/digits/job.toml
	@$(ENV) && $$SPOTBATCH_PYTHON examples/digits/accuracy.py examples/digits/out examples/digits/images

test:
	@$(ENV) && scripts/test.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

bench:
	@$(ENV) && cargo build --release --locked && $$SPOTBATCH_PYTHON benches/e2e_cpu.py

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

clean:
	rm -rf target examples/digits/out examples/digits/queue.db*
