#!/usr/bin/env bash
# Starts the services the tests need (moto, nisshi, Prometheus), on loopback and free ports, and
# prints `export` lines for their addresses. `scripts/test.sh` evaluates the output and stops them
# on exit (scripts/services.sh stop). Logs go to .cache/services/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$ROOT/.cache/services"
mkdir -p "$RUN"

free_port() { "$ROOT/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url, name, log
  for _ in $(seq 1 150); do
    if "$ROOT/.venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not start; its log:" >&2; cat "$3" >&2; return 1
}

case "${1:-start}" in
  start)
    port=$(free_port)
    "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$RUN/moto.log" 2>&1 &
    echo $! >"$RUN/moto.pid"
    wait_http "http://127.0.0.1:$port/moto-api/" moto "$RUN/moto.log"
    echo "export SPOTBATCH_TEST_SQS_ENDPOINT=http://127.0.0.1:$port"
    echo "export SPOTBATCH_TEST_S3_ENDPOINT=http://127.0.0.1:$port"
    echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1"
    # nisshi (née tansu), a Kafka-protocol broker (built once and cached by install-nisshi.sh),
    # with in-memory storage.
    nisshi="$("$ROOT/scripts/install-nisshi.sh")"
    kport=$(free_port)
    "$nisshi" broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
      --storage-engine memory://nisshi/ >"$RUN/nisshi.log" 2>&1 &
    echo $! >"$RUN/nisshi.pid"
    up=
    for _ in $(seq 1 150); do
      if "$ROOT/.venv/bin/python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$kport" 2>/dev/null; then up=1; break; fi
      sleep 0.2
    done
    [ -n "$up" ] || { echo "nisshi did not start; its log:" >&2; cat "$RUN/nisshi.log" >&2; exit 1; }
    echo "export SPOTBATCH_TEST_KAFKA_BROKERS=127.0.0.1:$kport"
    # Prometheus, Debian's package (installed here when missing), scraping whatever the tests list
    # in file_sd target files every second, keeping the `worker` label they give.
    if ! command -v prometheus >/dev/null; then
      if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo apt-get); fi
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends prometheus >"$RUN/prometheus-install.log" 2>&1 ||
        { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$RUN/prometheus-install.log" 2>&1 &&
          DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends prometheus >>"$RUN/prometheus-install.log" 2>&1; } ||
        { echo "installing prometheus failed:" >&2; cat "$RUN/prometheus-install.log" >&2; exit 1; }
    fi
    rm -rf "$RUN/prometheus" && mkdir -p "$RUN/prometheus/targets" "$RUN/prometheus/data"
    cat >"$RUN/prometheus/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: spotbatch
    honor_labels: true
    file_sd_configs:
      - files: ["$RUN/prometheus/targets/*.json"]
        refresh_interval: 1s
YML
    pport=$(free_port)
    prometheus --config.file="$RUN/prometheus/prometheus.yml" --storage.tsdb.path="$RUN/prometheus/data" \
      --web.listen-address="127.0.0.1:$pport" >"$RUN/prometheus.log" 2>&1 &
    echo $! >"$RUN/prometheus.pid"
    wait_http "http://127.0.0.1:$pport/-/ready" prometheus "$RUN/prometheus.log"
    echo "export SPOTBATCH_TEST_PROMETHEUS_URL=http://127.0.0.1:$pport"
    echo "export SPOTBATCH_TEST_PROMETHEUS_TARGETS=$RUN/prometheus/targets"
    ;;
  stop)
    for f in "$RUN"/*.pid; do
      [ -f "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    ;;
esac
