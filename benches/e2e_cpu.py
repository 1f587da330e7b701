#!/usr/bin/env python3
"""End-to-end CPU benchmark, all in one run on one machine:

  spotbatch   `spotbatch run` on N 256x256 JPEGs through a ResNet-18-shaped model (decode, resize to
              224, normalise, batch, infer, top-5 rows written as JSONL, queue and done markers);
  ceiling     onnxruntime's raw session.run on the same images, decoded and preprocessed beforehand
              (only inference is timed), same batch size and threads;
  python      a Python baseline: Pillow decode/resize/normalise in a process pool (one process per
              core), batch by batch, onnxruntime in the main process, top-5 rows written as JSONL.

Prints items/s and the ratios spotbatch/ceiling and spotbatch/python, and writes results.json.
usage: e2e_cpu.py [--images N] [--batch B] [--repeat R]   (run through `make bench`)
"""
import argparse
import concurrent.futures as cf
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench-work")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def make_inputs(n):
    model = os.path.join(WORK, "resnet18.onnx")
    if not os.path.exists(model):
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "make_resnet18.py"), model], check=True)
    return model, write_images(WORK, n)


def write_images(work, n):
    """N generated 256x256 JPEGs (smooth patterns plus noise, fixed seed) in WORK/images-N."""
    images = os.path.join(work, f"images-{n}")
    if not os.path.isdir(images):
        os.makedirs(images)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 256.0
        for i in range(n):
            a, b, c = rng.uniform(0.5, 8.0, 3)
            img = np.stack([np.sin(a * xx + b * yy + c), np.cos(b * xx - a * yy), np.sin(c * xx * yy + a)], -1)
            img = ((img + 1) * 127.5 + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img, "RGB").save(os.path.join(images, f"{i:05d}.jpg"), quality=90)
    return images


def preprocess(path):
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)


def top5_rows(keys, logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    rows = []
    for k, row in zip(keys, p):
        idx = np.argsort(-row, kind="stable")[:5]
        rows.append(json.dumps({"key": k, "top_k": [{"index": int(i), "label": str(i), "score": float(row[i])} for i in idx], "error": None}))
    return rows


def bench_spotbatch(model, images, batch, n, name="job"):
    job = os.path.join(WORK, name)
    shutil.rmtree(job, ignore_errors=True)
    os.makedirs(job)
    with open(os.path.join(job, "job.toml"), "w") as f:
        f.write(f"""name = "bench"
[input]
uri = "{images}"
glob = "*.jpg"
[model]
uri = "{model}"
batch_size = {batch}
[preprocess]
resize = [224, 224]
color = "rgb"
layout = "nchw"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[postprocess]
kind = "classify"
top_k = 5
softmax = true
[output]
uri = "./out"
[queue]
shard_size = 50
""")
    t0 = time.perf_counter()
    out = subprocess.run([os.path.join(ROOT, "target", "release", "spotbatch"), "run", os.path.join(job, "job.toml"),
                          "--progress", "none"], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"spotbatch failed: {out.stderr}")
    rows = sum(1 for p in glob.glob(os.path.join(job, "out", "*", "part-*.jsonl")) for _ in open(p))
    assert rows == n, f"{rows} rows for {n} images"
    return n / dt


def bench_ceiling(model, images, batch, n):
    paths = sorted(glob.glob(os.path.join(images, "*.jpg")))
    x = np.stack([preprocess(p) for p in paths])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    sess.run(None, {"input": x[:batch]})  # warm-up, as spotbatch's first batch is not excluded either
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        sess.run(None, {"input": x[i:i + batch]})
    return n / (time.perf_counter() - t0)


def bench_python(model, images, batch, n):
    out = os.path.join(WORK, "python-out.jsonl")
    t0 = time.perf_counter()
    paths = sorted(glob.glob(os.path.join(images, "*.jpg")))
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    with cf.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool, open(out, "w") as f:
        for i in range(0, n, batch):
            chunk = paths[i:i + batch]
            x = np.stack(list(pool.map(preprocess, chunk)))
            logits = sess.run(None, {"input": x})[0]
            f.write("\n".join(top5_rows([os.path.basename(p) for p in chunk], logits)) + "\n")
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    model, images = make_inputs(a.images)
    best = {}
    for r in range(a.repeat):
        for name, fn in [("spotbatch", bench_spotbatch), ("ceiling", bench_ceiling), ("python", bench_python)]:
            v = fn(model, images, a.batch, a.images)
            print(f"run {r + 1}: {name:10s} {v:7.1f} items/s", flush=True)
            best[name] = max(best.get(name, 0.0), v)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "images": a.images, "batch": a.batch, "items_per_s": best,
        "vs_ceiling": best["spotbatch"] / best["ceiling"], "vs_python": best["spotbatch"] / best["python"],
    }
    # spotbatch's fixed cost per run (process start, model load, session set-up, first batch),
    # which the ceiling does not pay: a one-image job.
    one = os.path.join(WORK, "images-1")
    os.makedirs(one, exist_ok=True)
    shutil.copy(sorted(glob.glob(os.path.join(images, "*.jpg")))[0], one)
    startup = min(1.0 / bench_spotbatch(model, one, a.batch, 1, "job-1") for _ in range(3))
    res["startup_s"] = startup
    print(f"best of {a.repeat}: spotbatch {best['spotbatch']:.1f}, ceiling {best['ceiling']:.1f}, python {best['python']:.1f} items/s")
    print(f"spotbatch / ceiling = {res['vs_ceiling']:.3f}   spotbatch / python = {res['vs_python']:.3f}")
    print(f"spotbatch start-up (one-image job): {startup:.2f} s; without it, spotbatch / ceiling = "
          f"{a.images / (a.images / best['spotbatch'] - startup) / best['ceiling']:.3f}")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
