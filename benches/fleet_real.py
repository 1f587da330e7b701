#!/usr/bin/env python3
"""Is the fleet simulation honest? One deadline scenario run for real on this machine, then the
same scenario in fleet-sim, side by side (issue 23's last target).

The real run: a coordinator on a SQLite queue sizes the fleet for a job with a deadline (the
digits demo's images copied until there are --items of them, shards of --shard-size); this
driver reads `spotbatch_desired_workers{capacity}` from its /metrics every second and follows it
with worker processes, as KEDA would follow it with pods: a spot worker asked for arrives after
a replacement delay (--spot-delay: fixed + exponential mean, seconds), an on-demand one after
--od-delay; fewer wanted, and the newest worker is sent SIGTERM (it drains; not an
interruption). Spot workers are interrupted as a Poisson process, --rate-per-hour per spot
worker-hour: a share --notice-share get an AWS spot instance-action notice (a fake IMDSv2 on
loopback that each worker polls) and are SIGKILLed --notice-s later if still there, the rest are
SIGKILLed at once. Workers are throttled (--throttle-ms after each batch of --batch) so that each
does a few items/s whatever else the two cores do.

Measured: the finish time (submit to the last shard's done marker), work redone (every item each
worker sent to the model, from --debug-processed-log, minus the job's items), notices and kills,
worker-seconds by capacity, each worker's items/s while busy, the start-up (spawn to first item)
and the unstarted shards a busy worker holds. Those go into a scenario file for
`fleet-sim --scenario-file`, which runs it on --sim-seeds seeds under the deadline-aware policy
configured as the coordinator configures it, twice: with each worker's items/s as the simulation
assumes (its speed), and as the workers' heartbeats report it (the items of the shards finished
since the last beat, over the interval: zero between shard ends, a spike after one, whenever a
shard takes longer than a heartbeat interval). Real and simulated are printed side by side.

The throttle makes a worker's work come in bursts (a batch is inferred and, when it ends its
shard, written within milliseconds; then the worker sleeps), so a SIGKILL loses the batches of
the shard in work dispatched so far, and with one batch per shard almost never anything; the
simulation's work is continuous (a kill loses half a shard on average).

usage: fleet_real.py [--runs N] [--seed N] [--items N] [--shard-size N] [--deadline-s S]
                     [--rate-per-hour R] [--notice-share F] ...   (--help lists them all)
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench-work", "fleet_real")
BIN = os.path.join(ROOT, "target", "release", "spotbatch")
SIM = os.path.join(ROOT, "target", "release", "fleet-sim")
DEMO = os.path.join(ROOT, "examples", "digits")
TOKEN = "bench-token"
IMDS_TOKEN = "AQAEAbench-token=="


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Imds:
    """A fake AWS IMDSv2 for every worker: /w<N>/latest/... (token required, instance-action
    404 until set)."""

    def __init__(self):
        self.actions = {}
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, body=""):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                ok = self.path.endswith("/latest/api/token") and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self.reply(200, IMDS_TOKEN) if ok else self.reply(400, "missing TTL header")

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                    return self.reply(401)
                m = re.match(r"^/(w\d+)/latest/meta-data/spot/instance-action$", self.path)
                body = imds.actions.get(m.group(1)) if m else None
                self.reply(200, body) if body else self.reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notice(self, name, secs):
        t = datetime.fromtimestamp(time.time() + secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.actions[name] = json.dumps({"action": "terminate", "time": t})


class Worker:
    def __init__(self, name, capacity, requested, ready_at):
        self.name, self.capacity, self.requested, self.ready_at = name, capacity, requested, ready_at
        self.proc = None
        self.spawned = self.exited = self.kill_at = None
        self.fate = ""  # "", "notice", "kill", "term"
        self.samples = []  # (t, items sent to the model so far)

    def live(self):
        """Counts towards the capacity asked for: pending or running, not leaving."""
        return self.exited is None and self.fate == ""


def draw(rng, delay):
    fixed, mean = delay
    return fixed + (rng.expovariate(1.0 / mean) if mean > 0 else 0.0)


def pair(text):
    a, b = (float(x) for x in text.split(","))
    return a, b


def prepare(d, args):
    """The job: the demo's images copied until there are args.items, its model and labels."""
    os.makedirs(os.path.join(d, "images"))
    src = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(DEMO, "images")) for f in fs
                 if f.endswith(".png"))
    for i in range(args.items):
        p = src[i % len(src)]
        dst = os.path.join(d, "images", f"copy{i // len(src)}", os.path.relpath(p, os.path.join(DEMO, "images")))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.link(p, dst) if os.stat(p).st_dev == os.stat(d).st_dev else shutil.copy(p, dst)
    for f in ("model.onnx", "labels.txt"):
        shutil.copy(os.path.join(DEMO, f), d)
    text = open(os.path.join(DEMO, "job.toml")).read()
    text = text.replace('name = "digits"', 'name = "digits-fleet"')
    text = text.replace("batch_size = 32", f"batch_size = {args.batch}")
    text = text.replace("shard_size = 64", f"shard_size = {args.shard_size}")
    text = text.replace("visibility_timeout_secs = 60", f"visibility_timeout_secs = {args.visibility_s}")
    text = text.replace("max_attempts = 3", f"max_attempts = {args.max_attempts}")
    text += f"\n[job]\ndeadline_hours = {args.deadline_s / 3600.0:.6f}\n"
    open(os.path.join(d, "job.toml"), "w").write(text)


def metrics(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def gauge(text, name, labels):
    m = re.search(rf'^{name}\{{{labels}\}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else None


def lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def one(run, args):
    rng = random.Random(args.seed + run)
    d = os.path.join(WORK, f"run{run}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    prepare(d, args)
    env = dict(os.environ, SPOTBATCH_TOKEN=TOKEN, SPOTBATCH_LOG="spotbatch=info,spotbatch_worker=info,spotbatch_coordinator=info")
    grpc, http = free_port(), free_port()
    url = f"http://127.0.0.1:{grpc}"
    clog = os.path.join(d, "coordinator.log")
    coord = subprocess.Popen([BIN, "coordinator", "--queue", f"sqlite://{d}/q.db", "--state", f"file://{d}/state/",
                              "--listen", f"127.0.0.1:{grpc}", "--http", f"127.0.0.1:{http}",
                              "--heartbeat-ms", str(args.heartbeat_ms), "--max-attempts", str(args.max_attempts),
                              "--max-spot-workers", str(args.max_spot),
                              "--max-on-demand-workers", str(args.max_od), "--instance-type", args.instance_type],
                             env=env, stdout=subprocess.DEVNULL, stderr=open(clog, "w"))
    imds = Imds()
    workers = []
    timeline = []  # (t, desired spot, desired od, live spot, live od, mode, triggers)
    events = []
    load0 = os.getloadavg()
    try:
        until = time.time() + 30
        while time.time() < until and metrics(http) == "":
            if coord.poll() is not None:
                sys.exit(f"coordinator exited: {open(clog).read()}")
            time.sleep(0.1)
        t0 = time.time()
        job = subprocess.run([BIN, "submit", "--coordinator", url, os.path.join(d, "job.toml")], env=env,
                             check=True, capture_output=True, text=True).stdout.strip().split()[-1]

        def spawn(w):
            w.proc = subprocess.Popen(
                [BIN, "worker", "--coordinator", url, "--capacity", w.capacity, "--id", w.name,
                 "--instance-type", args.instance_type, "--notices", "aws", "--aws-metadata-url", f"{imds.url}/{w.name}",
                 "--notice-poll-ms", "500", "--grace-period-secs", str(int(args.notice_s)),
                 "--throttle-batch-ms", str(args.throttle_ms), "--decode-threads", "1", "--ort-threads", "1",
                 "--peer-listen", "127.0.0.1:0", "--progress", "none",
                 "--debug-processed-log", os.path.join(d, f"{w.name}.processed")],
                env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, f"{w.name}.log"), "w"))
            w.spawned = time.time()

        status, last_status, done_at, failed, n = {}, 0.0, None, None, 0
        lam = args.rate_per_hour / 3600.0
        tick = 1.0
        next_tick = last_draw = time.time()
        while True:
            now = time.time()
            if now - t0 > args.give_up_s:
                print(f"run {run}: gave up after {args.give_up_s} s", file=sys.stderr)
                break
            text = metrics(http)
            want = {"spot": gauge(text, "spotbatch_desired_workers", 'capacity="spot"'),
                    "on-demand": gauge(text, "spotbatch_desired_workers", 'capacity="on_demand"')}
            if now - last_status >= 2.0:
                last_status = now
                r = subprocess.run([BIN, "status", job, "--json", "--coordinator", url], env=env,
                                   capture_output=True, text=True)
                if r.stdout.strip():
                    status = json.loads(r.stdout)
                    for wk in status.get("workers", []):
                        if wk["alive"] and not wk["exited"] and wk["shards"]:
                            events.append(("unstarted", wk["unstarted"]))
                if status.get("state") == "done" or status.get("items", {}).get("done") == args.items:
                    done_at = now
                    break
                if status.get("state") in ("failed", "cancelled"):
                    # Dead-lettered shards: the job cannot finish.
                    failed = (now - t0, len(status.get("dead_lettered", [])))
                    break
            fleet = status.get("fleet") or {}
            live = {c: [w for w in workers if w.capacity == c and w.live()] for c in ("spot", "on-demand")}
            timeline.append((now - t0, want["spot"], want["on-demand"], len(live["spot"]), len(live["on-demand"]),
                             fleet.get("mode"), ",".join(fleet.get("triggers") or [])))
            # Follow the desired counts.
            for c, delay in (("spot", args.spot_delay), ("on-demand", args.od_delay)):
                if want[c] is None:
                    continue
                have = live[c]
                for _ in range(int(want[c]) - len(have)):
                    name = f"w{n}"
                    n += 1
                    workers.append(Worker(name, c, now, now + draw(rng, delay)))
                # Unfilled requests first, then the newest worker.
                for w in sorted(have, key=lambda w: (w.proc is not None, -(w.spawned or 0)))[
                        :max(0, len(have) - int(want[c]))]:
                    if w.proc is None:
                        w.fate, w.exited = "cancelled", now
                    else:
                        w.fate = "term"
                        w.proc.send_signal(signal.SIGTERM)
                        events.append(("term", now - t0, w.name))
            # The market: each spot machine goes at rate λ over the time since the last draw.
            p_go, last_draw = 1.0 - math.exp(-lam * max(0.0, now - last_draw)), now
            for w in workers:
                if w.proc is None and w.fate == "" and now >= w.ready_at:
                    spawn(w)
                if w.proc is not None and w.exited is None:
                    if w.proc.poll() is not None:
                        w.exited = time.time()
                        continue
                    w.samples.append((now, lines(os.path.join(d, f"{w.name}.processed"))))
                    if w.fate == "notice" and now >= w.kill_at:
                        w.proc.kill()
                        events.append(("notice-expired-kill", now - t0, w.name))
                    if w.capacity == "spot" and w.fate == "" and rng.random() < p_go:
                        if rng.random() < args.notice_share:
                            w.fate, w.kill_at = "notice", now + args.notice_s
                            imds.notice(w.name, args.notice_s)
                            events.append(("notice", now - t0, w.name))
                        else:
                            w.fate = "kill"
                            w.proc.kill()
                            events.append(("kill", now - t0, w.name))
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.time()))
        # The job is done: every worker goes.
        for w in workers:
            if w.proc is not None and w.exited is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            if w.proc is not None and w.exited is None:
                try:
                    w.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                w.exited = time.time()
        final = metrics(http)
        cost = subprocess.run([BIN, "cost", os.path.join(d, "job.toml"), "--json"], env=env, capture_output=True,
                              text=True)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
        coord.kill()
        coord.wait()
        imds.server.shutdown()
    real = measure(d, args, t0, done_at, workers, timeline, events, final, cost, load0)
    real["failed"] = failed
    return real


def busy_rate(samples):
    """Items and seconds while the worker's count kept rising (gaps over 3 s left out)."""
    items, secs = 0, 0.0
    rising = [(t, c) for (t, c), (_, prev) in zip(samples[1:], samples[:-1]) if c > prev]
    for (t1, c1), (t2, c2) in zip(rising, rising[1:]):
        if t2 - t1 <= 3.0:
            items += c2 - c1
            secs += t2 - t1
    return items, secs


def measure(d, args, t0, done_at, workers, timeline, events, final, cost, load0):
    keys, sent = set(), 0
    for w in workers:
        p = os.path.join(d, f"{w.name}.processed")
        if os.path.exists(p):
            for line in open(p):
                keys.add(line.strip())
                sent += 1
    ledgers = []
    for root, _, files in os.walk(os.path.join(d, "out")):
        if root.endswith("_cost"):
            ledgers += [json.load(open(os.path.join(root, f))) for f in files if f.endswith(".json")]
    ends = [e["ended_at_ms"] / 1000.0 for l in ledgers for e in l.get("shards", []) if e["outcome"] in ("done",)]
    finish = (max(ends) - t0) if ends and done_at else None
    items, secs = 0, 0.0
    for w in workers:
        i, s = busy_rate(w.samples)
        items, secs = items + i, secs + s
    boots = sorted(next(t for t, c in w.samples if c > 0) - w.spawned for w in workers
                   if w.samples and w.samples[-1][1] > 0)
    unstarted = [e[1] for e in events if e[0] == "unstarted"]
    # Billed as a cloud bills: from the start to the exit, and a machine that got a notice until it
    # is taken (the worker drains and exits sooner).
    ws = {c: sum(max(w.exited, w.kill_at or 0) - w.spawned for w in workers
                 if w.capacity == c and w.spawned and w.exited) for c in ("spot", "on-demand")}
    spot_hours = ws["spot"] / 3600.0
    coord_int = {k: gauge(final, "spotbatch_spot_interruptions_total", f'kind="{k}"') or 0 for k in ("notice", "hard_kill")}
    try:
        ledger_redone = json.loads(cost.stdout)["items_redone"]
    except (ValueError, KeyError):
        ledger_redone = sum(l.get("items_redone", 0) for l in ledgers)
    return {
        "finish": finish, "done": done_at is not None, "items": len(keys), "sent": sent,
        "redone": sent - len(keys), "ledger_redone": ledger_redone,
        "notices": sum(1 for e in events if e[0] == "notice"), "kills": sum(1 for e in events if e[0] == "kill"),
        "expired_notices": sum(1 for e in events if e[0] == "notice-expired-kill"),
        "terms": sum(1 for e in events if e[0] == "term"), "coord_interruptions": coord_int,
        "worker_s": ws, "rate": items / secs if secs else float("nan"),
        "boot": boots[len(boots) // 2] if boots else 1.0,
        "unstarted": sum(unstarted) / len(unstarted) if unstarted else 0.0,
        "on_demand_bought": any(w.capacity == "on-demand" and w.spawned for w in workers),
        "spawned": {c: sum(1 for w in workers if w.capacity == c and w.spawned) for c in ("spot", "on-demand")},
        "rate_per_hour_seen": (sum(1 for e in events if e[0] in ("notice", "kill")) / spot_hours) if spot_hours else 0,
        "timeline": timeline, "events": [e for e in events if e[0] != "unstarted"],
        "workers": [(w.name, w.capacity, w.requested - t0, w.ready_at - t0, w.spawned and w.spawned - t0,
                     w.exited and w.exited - t0, w.fate) for w in workers],
        "load": (load0, os.getloadavg()),
    }


def scenario_file(path, args, real, rate_window=None):
    now = datetime.now(timezone.utc)
    hour_of_week = now.weekday() * 24 + now.hour + now.minute / 60.0
    text = f"""# written by benches/fleet_real.py: the scenario it ran, with what it measured
name = real-{socket.gethostname()}
instance_type = {args.instance_type}
start_hour_of_week = {hour_of_week:.3f}
items = {args.items}
items_per_second = {real['rate']:.3f}
deadline_s = {args.deadline_s}
max_spot = {args.max_spot}
max_on_demand = {args.max_od}
hazard_per_hour = {args.rate_per_hour}
notice_share = {args.notice_share}
notice_s = {args.notice_s}
spot_arrival = {args.spot_delay[0]} {args.spot_delay[1]}
on_demand_arrival = {args.od_delay[0]} {args.od_delay[1]}
boot = {real['boot']:.2f} 0
shard_items = {args.shard_size}
# a killed worker's lease is extended every third of the timeout: it expires 2/3 to 3/3 of it later
lease_expiry_s = {args.visibility_s * 5 / 6:.2f}
shard_overhead_s = 0
held_unstarted = {round(real['unstarted'])}
speed_spread = 0.05
# the driver follows the desired counts every second; the coordinator sizes the fleet every 2 s
# (or every heartbeat interval, if longer)
step_s = 1
# the queue dead-letters a shard after this many expired leases (the coordinator's --max-attempts)
max_attempts = {args.max_attempts}
# a notice's drain lets the shard in work finish (the worker's drain.rs)
drain_finishes_shard = true
decide_every_s = {max(2.0, args.heartbeat_ms / 1000.0)}
"""
    if rate_window:
        text += f"# items/s as the workers' heartbeats report them\nreported_rate_window_s = {rate_window}\n"
    open(path, "w").write(text)


def simulate(path, seeds):
    r = subprocess.run([SIM, "--scenario-file", path, "--seeds", str(seeds)], capture_output=True, text=True, check=True)
    sim = dict(kv.split("=") for kv in re.search(r"^SIM (.*)$", r.stdout, re.M).group(1).split())
    finishes = [float(x) for x in re.search(r"^SIM-FINISH (.*)$", r.stdout, re.M).group(1).split(",") if x]
    redone = [float(x) for x in re.search(r"^SIM-REDONE (.*)$", r.stdout, re.M).group(1).split(",") if x]
    table = r.stdout.split("\nSIM ")[0]
    return {k: float(v) for k, v in sim.items()}, finishes, redone, table


def rank(values, x):
    """The share of values below x, ties counted half."""
    return 100.0 * sum(1.0 if v < x else 0.5 if v == x else 0.0 for v in values) / max(1, len(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--throttle-ms", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--visibility-s", type=int, default=15)
    ap.add_argument("--deadline-s", type=float, default=600)
    ap.add_argument("--max-spot", type=int, default=2)
    ap.add_argument("--max-od", type=int, default=1)
    ap.add_argument("--instance-type", default="g5.xlarge")
    ap.add_argument("--rate-per-hour", type=float, default=60.0)
    ap.add_argument("--notice-share", type=float, default=0.9)
    ap.add_argument("--notice-s", type=float, default=10.0)
    ap.add_argument("--spot-delay", type=pair, default=(5.0, 10.0), help="fixed,exponential mean (s)")
    ap.add_argument("--od-delay", type=pair, default=(1.0, 1.0), help="fixed,exponential mean (s)")
    ap.add_argument("--heartbeat-ms", type=int, default=2000)
    ap.add_argument("--max-attempts", type=int, default=3, help="the coordinator's (and the manifest's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--sim-seeds", type=int, default=500)
    ap.add_argument("--give-up-s", type=float, default=480)
    args = ap.parse_args()
    for b in (BIN, SIM):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release (and -p spotbatch-fleet --bin fleet-sim)")
    busy = subprocess.run(["pgrep", "-c", "-x", "rustc"], capture_output=True, text=True).stdout.strip() or "0"
    print(f"# {datetime.now().astimezone().isoformat(timespec='seconds')} on {socket.gethostname()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {busy} rustc running; job {args.items} digits "
          f"images in shards of {args.shard_size}, batches of {args.batch} with a {args.throttle_ms} ms pause; "
          f"deadline {args.deadline_s:.0f} s; at most {args.max_spot} spot + {args.max_od} on-demand "
          f"({args.instance_type}); interruptions {args.rate_per_hour}/spot worker-hour, "
          f"{100 * args.notice_share:.0f} % with a {args.notice_s:.0f} s notice; spot arrives after "
          f"{args.spot_delay[0]:.0f} s + Exp({args.spot_delay[1]:.0f} s), on-demand after "
          f"{args.od_delay[0]:.0f} s + Exp({args.od_delay[1]:.0f} s); lease {args.visibility_s} s", flush=True)
    summary = []
    for run in range(args.runs):
        real = one(run, args)
        sims = []
        for label, window in (("simulated, true speeds", None), ("simulated, heartbeat rates", args.heartbeat_ms / 1000)):
            path = os.path.join(WORK, f"run{run}", f"scenario{'-heartbeat' if window else ''}.txt")
            scenario_file(path, args, real, window)
            sims.append((label, path) + simulate(path, args.sim_seeds))
        print(f"\n## run {run} (seed {args.seed + run}); load {real['load'][0][0]:.2f} at the start, "
              f"{real['load'][1][0]:.2f} at the end")
        tl = real["timeline"]
        changes = [f"{t:.0f}: {s and int(s)}/{o and int(o)} {m or ''} {tr}".strip()
                   for i, (t, s, o, _, _, m, tr) in enumerate(tl)
                   if i == 0 or (tl[i - 1][1], tl[i - 1][2], tl[i - 1][5], tl[i - 1][6]) != (s, o, m, tr)]
        modes = {m: sum(1 for x in tl if x[5] == m) for m in ("depth", "deadline")}
        print(f"the coordinator's decisions, read every second: {modes['deadline']} s in deadline mode, "
              f"{modes['depth']} s in depth mode, {len(changes)} changes; the first (t s: desired spot/on-demand, "
              f"mode, triggers):", "; ".join(changes[:25]) + ("; …" if len(changes) > 25 else ""))
        print("events:", ", ".join(f"{k} {w} at {t:.0f} s" for k, t, w in real["events"]))
        print(f"measured: {real['rate']:.2f} items/s per busy worker, start-up {real['boot']:.1f} s, "
              f"{real['unstarted']:.2f} unstarted shards held per busy worker; the coordinator counted "
              f"{real['coord_interruptions']['notice']:.0f} notices and {real['coord_interruptions']['hard_kill']:.0f} "
              f"hard kills; the ledgers' items_redone (an upper bound) {real['ledger_redone']}; "
              f"workers spawned {real['spawned']}, scaled down {real['terms']}, notices outlived {real['expired_notices']}")
        for label, path, _, _, _, table in sims:
            print(f"\n{label} ({os.path.relpath(path, ROOT)}): {table}")
        f = real["finish"]
        head = " | ".join(f"{label}: mean ± sd [p5 – p95], real's rank" for label, *_ in sims)
        print(f"| {args.items} items, deadline {args.deadline_s:.0f} s | real | {head} |")
        print("| --- | --- |" + " --- |" * len(sims))

        def row(name, real_v, cell):
            print(f"| {name} | {real_v} | " + " | ".join(cell(sim, fin, red) for _, _, sim, fin, red, _ in sims) + " |")
        row("finish, s", f"{f:.1f}" if f else (f"failed at {real['failed'][0]:.0f} s ({real['failed'][1]} shards "
                                                 f"dead-lettered)" if real["failed"] else "not finished"),
            lambda sim, fin, red: f"{sim['finish_mean']:.1f} ± {sim['finish_sd']:.1f} [{sim['finish_p5']:.0f} – "
                                  f"{sim['finish_p95']:.0f}], {rank(fin, f or 1e9):.0f} %")
        row("items redone", real["redone"],
            lambda sim, fin, red: f"{sim['redone_mean']:.1f} [0 – {sim['redone_p95']:.0f}], "
                                  f"{rank(red, real['redone']):.0f} %")
        row("notices / hard kills", f"{real['notices']} / {real['kills']}",
            lambda sim, fin, red: f"{sim['notices_mean']:.2f} / {sim['kills_mean']:.2f}")
        row("spot / on-demand worker-s", f"{real['worker_s']['spot']:.0f} / {real['worker_s']['on-demand']:.0f}",
            lambda sim, fin, red: f"{sim['spot_s_mean']:.0f} / {sim['on_demand_s_mean']:.0f}")
        row("deadline met", "yes" if f and f <= args.deadline_s else "no",
            lambda sim, fin, red: f"{100 * sim['hits'] / sim['runs']:.1f} % of runs")
        row("job failed (dead-lettered shards)", "yes" if real["failed"] else "no",
            lambda sim, fin, red: f"{100 * sim['failed'] / sim['runs']:.1f} % of runs")
        row("on-demand bought", "yes" if real["on_demand_bought"] else "no",
            lambda sim, fin, red: f"{100 * sim['with_on_demand'] / sim['runs']:.1f} % of runs")
        json.dump({k: v for k, v in real.items()}, open(os.path.join(WORK, f"run{run}", "real.json"), "w"), indent=1)
        summary.append((real, sims))
        sys.stdout.flush()
    if len(summary) > 1:
        fins = [r["finish"] for r, _ in summary if r["finish"]]
        fails = sum(1 for r, _ in summary if r["failed"])
        kinds = ", ".join(f"{r['notices']}/{r['kills']}" for r, _ in summary)
        print(f"\nall {len(summary)} runs: real finish {', '.join(f'{f:.0f}' for f in fins)} s "
              f"(mean {sum(fins) / max(1, len(fins)):.0f} s), redone {', '.join(str(r['redone']) for r, _ in summary)} "
              f"items, notices/kills {kinds}" + (f"; {fails} failed (dead-lettered shards)" if fails else ""))
        for i, (label, _path, sim, *_rest) in enumerate(summary[0][1]):
            ranks = ", ".join(f"{rank(sims[i][3], r['finish'] or 1e9):.0f} %" for r, sims in summary)
            print(f"  {label}: finish {sim['finish_mean']:.0f} ± {sim['finish_sd']:.0f} s, redone "
                  f"{sim['redone_mean']:.1f} items; the real runs' finish ranks among them {ranks}")


if __name__ == "__main__":
    main()
