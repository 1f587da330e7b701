#!/usr/bin/env python3
"""Work stealing: job wall time with one straggler, stealing on vs off, same job, one run.

The digits demo job (540 images) in shards of 10, through a coordinator on a SQLite queue, with
two workers: a straggler (the test-only knob pauses it --throttle-ms after every batch of 10, like
a throttled GPU) that may hold --prefetch shards, started first so it leases its fill, and a
normal worker started a second later. With stealing off, the normal worker drains the queue and
then waits while the straggler works through what it holds; with stealing on, it takes the
straggler's unstarted shards. Prints each wall time (submit → job done and both workers exited),
the shards stolen, and the ratio.
usage: steal.py [--throttle-ms MS] [--prefetch N] [--rounds N]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench-work", "steal")
BIN = os.path.join(ROOT, "target", "release", "spotbatch")
DEMO = os.path.join(ROOT, "examples", "digits")
TOKEN = "bench-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, log):
    until = time.time() + 30
    while time.time() < until:
        if proc.poll() is not None:
            sys.exit(f"coordinator exited: {open(log).read()}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("coordinator not ready")


def one(mode, args):
    d = os.path.join(WORK, mode)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    text = open(os.path.join(DEMO, "job.toml")).read()
    text = text.replace("shard_size = 64", "shard_size = 10").replace("batch_size = 32", "batch_size = 10")
    for f in ("model.onnx", "labels.txt"):
        shutil.copy(os.path.join(DEMO, f), d)
    shutil.copytree(os.path.join(DEMO, "images"), os.path.join(d, "images"))
    open(os.path.join(d, "job.toml"), "w").write(text)
    env = dict(os.environ, SPOTBATCH_TOKEN=TOKEN, SPOTBATCH_LOG="spotbatch=info,spotbatch_worker=info")
    grpc, http = free_port(), free_port()
    url = f"http://127.0.0.1:{grpc}"
    clog = os.path.join(d, "coordinator.log")
    coord = subprocess.Popen([BIN, "coordinator", "--queue", f"sqlite://{d}/q.db", "--heartbeat-ms", "300",
                              "--listen", f"127.0.0.1:{grpc}", "--http", f"127.0.0.1:{http}",
                              "--state", os.path.join(d, "state")],
                             env=env, stdout=subprocess.DEVNULL, stderr=open(clog, "w"))
    try:
        wait_ready(http, coord, clog)
        t0 = time.time()
        job = subprocess.run([BIN, "submit", "--coordinator", url, os.path.join(d, "job.toml")], env=env,
                             check=True, capture_output=True, text=True).stdout.strip()

        def worker(name, extra):
            return subprocess.Popen([BIN, "worker", "--coordinator", url, "--exit-when-empty", "--id", name,
                                     "--steal", mode, "--peer-listen", "127.0.0.1:0", "--decode-threads", "1",
                                     "--ort-threads", "1"] + extra,
                                    env=env, stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(d, f"{name}.log"), "w"))
        slow = worker("straggler", ["--throttle-batch-ms", str(args.throttle_ms), "--prefetch", str(args.prefetch)])
        time.sleep(1.0)
        mport = free_port()
        fast = worker("normal", ["--prefetch", "4", "--metrics-addr", f"127.0.0.1:{mport}",
                                 "--metrics-linger-ms", "1500"])
        # The normal worker's metrics, scraped until it exits (the last scrape has the totals).
        last = ""
        slow_exit = None
        while fast.poll() is None:
            if slow_exit is None and slow.poll() is not None:
                slow_exit = time.time()
            try:
                last = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=1).read().decode()
            except OSError:
                pass
            time.sleep(0.2)
        fast_exit = time.time() - 1.5  # its metrics linger
        slow.wait(timeout=600)
        slow_exit = slow_exit or time.time()
        for p, name in ((fast, "normal"), (slow, "straggler")):
            if p.wait(timeout=600) != 0:
                sys.exit(f"{name} failed: {open(os.path.join(d, name + '.log')).read()}")
        wall = max(slow_exit, fast_exit) - t0
        status = json.loads(subprocess.run([BIN, "status", job, "--json", "--coordinator", url], env=env,
                                           check=True, capture_output=True, text=True).stdout)
        if status["items"]["done"] != 540:
            sys.exit(f"{mode}: job not complete: {status}")
        normal = open(os.path.join(d, "normal.log")).read()
        stolen = sum(int(m) for m in re.findall(r"stole unstarted shards.*? shards=(\d+)", normal))
        done = {}
        for name in ("straggler", "normal"):
            m = re.search(r": (\d+) shards? done", open(os.path.join(d, f"{name}.log")).read())
            done[name] = int(m.group(1)) if m else -1
        def metric(name):
            m = re.search(rf"^{name} ([0-9.e+-]+)$", last, re.M)
            return float(m.group(1)) if m else 0.0
        n = metric("spotbatch_handoff_seconds_count")
        handoff_ms = 1000 * metric("spotbatch_handoff_seconds_sum") / n if n else float("nan")
        return wall, stolen, done, handoff_ms
    finally:
        coord.kill()
        coord.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--throttle-ms", type=int, default=500)
    ap.add_argument("--prefetch", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: cargo build --release")
    print(f"# {datetime.now().astimezone().isoformat(timespec='seconds')} on {socket.gethostname()}, "
          f"{os.cpu_count()} cores; digits job 540 images, 54 shards of 10; straggler pauses "
          f"{args.throttle_ms} ms per batch of 10, prefetch {args.prefetch}; normal worker prefetch 4")
    walls = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in ("off", "on"):
            wall, stolen, done, handoff_ms = one(mode, args)
            walls[mode].append(wall)
            print(f"stealing {mode:3}: {wall:6.2f} s  shards done straggler {done['straggler']:2} "
                  f"normal {done['normal']:2}  stolen {stolen}"
                  + (f"  mean hand-off {handoff_ms:.1f} ms" if stolen else ""))
    on, off = min(walls["on"]), min(walls["off"])
    print(f"wall time with one straggler: stealing off {off:.2f} s, on {on:.2f} s; off/on = {off / on:.2f}x")


if __name__ == "__main__":
    main()
