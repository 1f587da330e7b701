#!/usr/bin/env python3
"""SQS and Kafka paths vs the embedded path, on the digits demo job (540 images), all in one run
against moto's server and nisshi 0.8.1 (started by `make bench-sqs` through scripts/services.sh):

  embedded    `spotbatch run` (SQLite queue, local folders)
  sqs         `spotbatch enqueue` + one `spotbatch worker --exit-when-empty`, queue on SQS, inputs
              and outputs in local folders
  sqs+s3      the same with inputs, model and outputs on S3
  kafka       the same as sqs with the queue on Kafka (nisshi, 8 partitions, spotbatch's batched
              producer)

Prints items/s, SQS requests per 1000 items (as the worker counts them), the Kafka partition
hand-over on drain (three workers, one drained with SIGTERM: seconds until one of the other two
logs partitions assigned; three runs), and the recovery time:
a worker holding leased shards is SIGKILLed, and the time until another worker starts on one of
them is measured (it is the visibility timeout's remainder, by design).
usage: sqs.py [--shard-size N] [--visibility S]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench-work", "sqs")
BIN = os.path.join(ROOT, "target", "release", "spotbatch")
DEMO = os.path.join(ROOT, "examples", "digits")
EP = os.environ["SPOTBATCH_TEST_SQS_ENDPOINT"]
KAFKA = os.environ["SPOTBATCH_TEST_KAFKA_BROKERS"]
ENV = dict(os.environ, AWS_ENDPOINT_URL=EP, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
           AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")


def manifest(path, inp, model, labels, out, queue, shard, vis):
    with open(path, "w") as f:
        f.write(f"""name = "digits"
[input]
uri = "{inp}"
glob = "**/*.png"
[model]
uri = "{model}"
batch_size = 32
[preprocess]
resize = [8, 8]
color = "gray"
[postprocess]
top_k = 3
labels = "{labels}"
[output]
uri = "{out}"
[queue]
uri = "{queue}"
shard_size = {shard}
visibility_timeout_secs = {vis}
""")


def sh(*args, **kw):
    return subprocess.run([BIN, *args], env=ENV, check=True, capture_output=True, text=True, **kw)


def new_queue(vis):
    q = f"sqs://bench-{uuid.uuid4().hex[:10]}?region=us-east-1&endpoint={EP}"
    sh("queue", "create", q, "--dlq", "--max-attempts", "5")
    return q


def distributed(job, n):
    t0 = time.perf_counter()
    sh("enqueue", job)
    w = sh("worker", "--queue", queue_of(job), "--exit-when-empty", "--prefetch", "4")
    dt = time.perf_counter() - t0
    m = re.search(r"(\d+) queue requests", w.stderr)
    return n / dt, (int(m.group(1)) * 1000 / n if m else None)


def queue_of(job):
    return re.search(r'^uri = "((?:sqlite|sqs|kafka)://[^"]*)"', open(job).read(), re.M).group(1)


def kafka_queue():
    q = f"kafka://{KAFKA}/bench-{uuid.uuid4().hex[:10]}?partitions=8&session_timeout_ms=6000"
    sh("queue", "create", q)
    return q


def kafka_handover(images, model, labels, shard, vis):
    """Three workers share a topic; one is drained with SIGTERM; seconds until one of the other
    two logs partitions it took over."""
    job = os.path.join(WORK, "handover.toml")
    # Each run its own output: a run's done shards would be skipped by the next one's enqueue, and
    # with nothing left to do the workers exit before anything can move.
    out = os.path.join(WORK, f"out-handover-{uuid.uuid4().hex[:8]}")
    manifest(job, images, model, labels, out, kafka_queue(), 8, vis)
    sh("enqueue", job)
    q = queue_of(job)
    logs = [os.path.join(WORK, f"handover-{i}.log") for i in range(3)]
    ws = [subprocess.Popen([BIN, "worker", "--queue", q, "--manifest", job, "--throttle-batch-ms", "300", "--exit-when-empty"],
                           env=dict(ENV, SPOTBATCH_LOG="spotbatch_queue=info"), stdout=subprocess.DEVNULL,
                           stderr=open(l, "w")) for l in logs]
    assigned = lambda l: [x for x in open(l).read().splitlines() if "kafka partitions assigned" in x and not x.endswith("partitions=[]")]
    until = time.time() + 60
    while not all(assigned(l) for l in logs):
        if time.time() > until:
            raise SystemExit("the three workers never all got partitions")
        time.sleep(0.05)
    time.sleep(1)
    others = lambda: sum(len(assigned(l)) for l in logs[1:])
    before = others()
    t0 = time.time()
    ws[0].send_signal(signal.SIGTERM)
    while others() == before:
        if time.time() > t0 + 60:
            raise SystemExit("partitions never moved")
        time.sleep(0.01)
    moved = time.time() - t0
    for w in ws:
        w.send_signal(signal.SIGTERM)
        w.wait()
    return moved


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--visibility", type=int, default=10)
    a = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    n = sum(len(f) for _, _, f in os.walk(os.path.join(DEMO, "images")))
    images, model, labels = os.path.join(DEMO, "images"), os.path.join(DEMO, "model.onnx"), os.path.join(DEMO, "labels.txt")
    res = {"date": time.strftime("%Y-%m-%d"), "items": n, "shard_size": a.shard_size}

    emb = os.path.join(WORK, "embedded.toml")
    manifest(emb, images, model, labels, os.path.join(WORK, "out-embedded"), "sqlite://" + os.path.join(WORK, "q.db"), a.shard_size, a.visibility)
    t0 = time.perf_counter()
    sh("run", emb, "--progress", "none")
    res["embedded_items_per_s"] = n / (time.perf_counter() - t0)

    sqs = os.path.join(WORK, "sqs.toml")
    manifest(sqs, images, model, labels, os.path.join(WORK, "out-sqs"), new_queue(a.visibility), a.shard_size, a.visibility)
    res["sqs_items_per_s"], res["sqs_requests_per_1000_items"] = distributed(sqs, n)

    s3 = boto3.client("s3", endpoint_url=EP, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for root, _, files in os.walk(images):
        for f in files:
            p = os.path.join(root, f)
            s3.upload_file(p, bucket, "images/" + os.path.relpath(p, images))
    s3.upload_file(model, bucket, "model/model.onnx")
    s3.upload_file(labels, bucket, "model/labels.txt")
    s3m = os.path.join(WORK, "s3.toml")
    manifest(s3m, f"s3://{bucket}/images", f"s3://{bucket}/model/model.onnx", f"s3://{bucket}/model/labels.txt",
             f"s3://{bucket}/out", new_queue(a.visibility), a.shard_size, a.visibility)
    res["sqs_s3_items_per_s"], res["sqs_s3_requests_per_1000_items"] = distributed(s3m, n)

    km = os.path.join(WORK, "kafka.toml")
    manifest(km, images, model, labels, os.path.join(WORK, "out-kafka"), kafka_queue(), a.shard_size, a.visibility)
    res["kafka_items_per_s"], _ = distributed(km, n)
    runs = sorted(kafka_handover(images, model, labels, a.shard_size, a.visibility) for _ in range(3))
    res["kafka_drain_handover_s"], res["kafka_drain_handover_runs_s"] = runs[1], runs

    # Recovery: A leases shards and is SIGKILLed; B starts on one of them after the lease expires.
    rec = os.path.join(WORK, "recovery.toml")
    manifest(rec, images, model, labels, os.path.join(WORK, "out-recovery"), new_queue(a.visibility), 8, a.visibility)
    sh("enqueue", rec)
    q = queue_of(rec)
    wa = subprocess.Popen([BIN, "worker", "--queue", q, "--manifest", rec, "--prefetch", "8", "--throttle-batch-ms", "500"],
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = os.path.join(WORK, "out-recovery")
    while not any("_done" in r and f for r, _, f in os.walk(done)):
        time.sleep(0.05)
    wb = subprocess.Popen([BIN, "worker", "--queue", q, "--manifest", rec, "--exit-when-empty"],
                          env=dict(ENV, SPOTBATCH_LOG="spotbatch_worker=info"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    wa.send_signal(signal.SIGKILL)
    killed = time.time()
    wa.wait()
    _, err = wb.communicate(timeout=300)
    stamps = [l.split()[0] for l in err.splitlines() if "working a redelivered shard" in l]
    if not stamps:
        raise SystemExit("worker B never picked up a redelivered shard:\n" + err)
    first = datetime.fromisoformat(stamps[0].replace("Z", "+00:00")).timestamp()
    res["visibility_timeout_s"] = a.visibility
    res["death_to_rework_s"] = first - killed

    print(json.dumps(res, indent=1))
    print(f"embedded {res['embedded_items_per_s']:.0f} items/s | SQS {res['sqs_items_per_s']:.0f} items/s, "
          f"{res['sqs_requests_per_1000_items']:.0f} SQS requests / 1000 items | SQS+S3 {res['sqs_s3_items_per_s']:.0f} items/s, "
          f"{res['sqs_s3_requests_per_1000_items']:.0f} requests / 1000 items | Kafka {res['kafka_items_per_s']:.0f} items/s, "
          f"drain hand-over (3 workers) median {res['kafka_drain_handover_s']:.2f} s of 3 | worker death -> shards worked again: "
          f"{res['death_to_rework_s']:.1f} s (visibility timeout {a.visibility} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
