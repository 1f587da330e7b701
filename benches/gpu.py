#!/usr/bin/env python3
"""GPU checks and benchmark, all in one run on one GPU machine (`make bench-gpu`, or by hand on a
machine with the onnxruntime-gpu wheel's libraries):

  parity     the same images through `spotbatch run --device cpu` and `--device cuda` (GPU
             preprocessing) on a ResNet-50-shaped model, fp32 and fp16: top-1 agreement and the
             largest score difference; the demo's checks are in `cargo test --test gpu`;
  spotbatch  `spotbatch run --device cuda` on N 256x256 JPEGs (U distinct ones, hard-linked under
             new names up to N; default 49152 of 4096) (decode on the CPU, resize and
             normalise on the GPU, batches through IO binding, top-5 rows written as JSONL, queue
             and done markers), fp32 and fp16, with ONNX Runtime's exhaustive cuDNN convolution
             search (its default) and again with `cudnn_conv_algo_search = "heuristic"`;
  ceiling    onnxruntime-gpu's raw session.run with the CUDA provider on the same model, same batch
             size, inputs decoded and preprocessed beforehand (numpy in, numpy out: only inference
             and its copies are timed); and the same with the input already on the GPU (IO binding),
             the model's own compute alone; N items each (the U images' batches cycled).

Prints items/s and the ratios, and writes results.json.
usage: gpu.py --spotbatch BIN [--images N] [--unique U] [--batch B] [--repeat R] [--work DIR]
The Python onnxruntime must be the onnxruntime-gpu build; ORT_DYLIB_PATH its libonnxruntime.so.
"""
import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from e2e_cpu import preprocess, write_images as make_images  # noqa: E402  (same images, same reference preprocessing)


def make_model(work, fp16):
    path = os.path.join(work, "resnet50-fp16.onnx" if fp16 else "resnet50.onnx")
    if not os.path.exists(path):
        cmd = [sys.executable, os.path.join(ROOT, "benches", "make_resnet50.py"), path] + (["--fp16"] if fp16 else [])
        subprocess.run(cmd, check=True)
    return path


def run_spotbatch(args, model, images, name, device, extra_env=None, pre_device="auto", model_extra=""):
    job = os.path.join(args.work, name)
    shutil.rmtree(job, ignore_errors=True)
    os.makedirs(job)
    with open(os.path.join(job, "job.toml"), "w") as f:
        f.write(f"""name = "{name}"
[input]
uri = "{images}"
glob = "*.jpg"
[model]
uri = "{model}"
batch_size = {args.batch}
max_batch_delay_ms = 2
{model_extra}
[preprocess]
resize = [224, 224]
color = "rgb"
layout = "nchw"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
device = "{pre_device}"
[postprocess]
kind = "classify"
top_k = 5
softmax = true
[output]
uri = "./out"
[queue]
shard_size = {args.shard}
""")
    env = dict(os.environ, **(extra_env or {}))
    cmd = [args.spotbatch, "run", os.path.join(job, "job.toml"), "--progress", "none", "--device", device,
           "--prefetch", "4", "--timings"]
    if device != "cpu":
        cmd += ["--decode-threads", str(max(1, (os.cpu_count() or 2) - 1))]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"spotbatch ({name}) failed: {out.stderr[-3000:]}")
    rows = {}
    for p in glob.glob(os.path.join(job, "out", "*", "part-*.jsonl")):
        for line in open(p):
            r = json.loads(line)
            rows[r["key"]] = r
    n = len(glob.glob(os.path.join(images, "*.jpg")))
    assert len(rows) == n, f"{len(rows)} rows for {n} images"
    return n / dt, rows, out.stderr


# cuDNN's heuristic algorithm choice, as a `[model]` line (ONNX Runtime's default is exhaustive).
HEURISTIC = 'cudnn_conv_algo_search = "heuristic"'


def timings_of(log):
    """The `--timings` report in a run's stderr: where spotbatch's time went, which stage holds
    the model up."""
    return log[log.find("timings ("):] if "timings (" in log else "(no timings)\n"


def compare(a, b):
    """Top-1 agreement and the largest difference of the top-5 scores, matched by class."""
    same, max_diff, near_ties = 0, 0.0, 0
    for key, ra in a.items():
        rb = b[key]
        ta = {t["index"]: t["score"] for t in ra["top_k"]}
        tb = {t["index"]: t["score"] for t in rb["top_k"]}
        if ra["top_k"][0]["index"] == rb["top_k"][0]["index"]:
            same += 1
        elif ra["top_k"][0]["score"] - ra["top_k"][1]["score"] < 1e-2:
            near_ties += 1
        for k in set(ta) & set(tb):
            max_diff = max(max_diff, abs(ta[k] - tb[k]))
    return same / len(a), max_diff, near_ties


def job_images(work, n, unique):
    """N JPEGs for a spotbatch run: `unique` generated ones, then hard links to them under new
    names up to N (decoding the same bytes again is the same work; generating 50k distinct images
    would take minutes)."""
    if n <= unique:
        return make_images(work, n)
    base = make_images(work, unique)
    images = os.path.join(work, f"images-{n}-of-{unique}")
    if not os.path.isdir(images):
        tmp = images + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        src = sorted(glob.glob(os.path.join(base, "*.jpg")))
        for i in range(n):
            os.link(src[i % len(src)], os.path.join(tmp, f"{i:06d}.jpg"))
        os.rename(tmp, images)
    return images


def ceiling(model, x, batch, fp16, iobinding, n):
    """Items/s of onnxruntime-gpu alone over `n` items: the preprocessed images `x`, in batches,
    cycled until `n` items have run."""
    sess = ort.InferenceSession(model, providers=[("CUDAExecutionProvider", {"cudnn_conv_use_max_workspace": "1"})])
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    x = x.astype(np.float16) if fp16 else x
    assert len(x) >= batch, f"--unique ({len(x)}) must be at least --batch ({batch})"
    batches = [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x) - batch + 1, batch)]
    if iobinding:
        dev = [ort.OrtValue.ortvalue_from_numpy(b, "cuda", 0) for b in batches]

        def one(i):
            io = sess.io_binding()
            io.bind_ortvalue_input("input", dev[i])
            io.bind_output("logits", "cpu")
            sess.run_with_iobinding(io)
            return io.copy_outputs_to_cpu()[0]
    else:
        def one(i):
            return sess.run(None, {"input": batches[i]})[0]
    for i in range(min(3, len(batches))):  # warm-up: cuDNN picks its algorithms per shape
        one(i)
    runs = max(1, n // batch)
    t0 = time.perf_counter()
    for i in range(runs):
        one(i % len(batches))
    return runs * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spotbatch", required=True)
    # A run long enough that spotbatch's fixed start-up (~1.3 s on an H100) weighs what it does
    # on a real job, not a third of it; `--unique` of them are distinct (see job_images).
    ap.add_argument("--images", type=int, default=49152)
    ap.add_argument("--unique", type=int, default=4096)
    ap.add_argument("--parity-images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--shard", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-work", "gpu"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cores": os.cpu_count(),
           "batch": a.batch, "images": a.images, "unique_images": a.unique, "onnxruntime": ort.__version__}
    try:
        res["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
    except OSError:
        res["gpu"] = "?"
    print(f"GPU: {res['gpu']}; onnxruntime {ort.__version__}; {os.cpu_count()} cores", flush=True)
    small = make_images(a.work, a.parity_images)
    images = job_images(a.work, a.images, a.unique)
    models = {False: make_model(a.work, False), True: make_model(a.work, True)}

    # Parity: CPU reference (CPU preprocessing, CPU inference) against CUDA.
    _, cpu_rows, _ = run_spotbatch(a, models[False], small, "parity-cpu", "cpu")
    res["parity"] = {}
    for label, fp16, pre in [("fp32 gpu-pre", False, "gpu"), ("fp32 cpu-pre", False, "cpu"), ("fp16 gpu-pre", True, "gpu")]:
        _, rows, log = run_spotbatch(a, models[fp16], small, "parity-" + label.replace(" ", "-"), "cuda", pre_device=pre)
        agree, diff, ties = compare(cpu_rows, rows)
        res["parity"][label] = {"top1_agreement": agree, "max_score_diff": diff, "disagreements_at_near_ties": ties}
        print(f"parity {label:13s} vs CPU: top-1 agreement {agree:.4f} ({ties} disagreements at near-ties), "
              f"max top-5 score diff {diff:.2e}", flush=True)

    # Benchmark.
    paths = sorted(glob.glob(os.path.join(make_images(a.work, min(a.unique, a.images)), "*.jpg")))
    x = np.stack([preprocess(p) for p in paths])
    res["items_per_s"] = {}
    for fp16 in (False, True):
        tag = "fp16" if fp16 else "fp32"
        best = {}
        for r in range(a.repeat):
            v, _, log = run_spotbatch(a, models[fp16], images, f"bench-{tag}", "cuda")
            timings = timings_of(log)
            best.setdefault("timings", []).append(timings)
            print(timings, end="", flush=True)
            # cuDNN's heuristic algorithm choice instead of ONNX Runtime's exhaustive search
            # (which times every algorithm on each shape's first batch).
            vh, _, log_h = run_spotbatch(a, models[fp16], images, f"bench-{tag}-heuristic", "cuda",
                                         model_extra=HEURISTIC)
            best.setdefault("timings_heuristic", []).append(timings_of(log_h))
            c = ceiling(models[fp16], x, a.batch, fp16, iobinding=False, n=a.images)
            cb = ceiling(models[fp16], x, a.batch, fp16, iobinding=True, n=a.images)
            for k, val in (("spotbatch", v), ("spotbatch_heuristic", vh), ("ceiling", c), ("ceiling_iobinding", cb)):
                best[k] = max(best.get(k, 0.0), val)
            print(f"{tag} run {r + 1}: spotbatch {v:8.1f}  (heuristic conv search {vh:8.1f})  ceiling (session.run) {c:8.1f}  "
                  f"ceiling (IO binding) {cb:8.1f} items/s", flush=True)
        # Fixed cost of a run (process start, model load, cuDNN set-up), which the ceiling does not pay.
        one = os.path.join(a.work, "images-one")
        os.makedirs(one, exist_ok=True)
        shutil.copy(paths[0], one)
        def startup_of(name, model_extra=""):
            """Seconds a one-image job takes, best of 2."""
            return min(1.0 / run_spotbatch(a, models[fp16], one, name, "cuda", model_extra=model_extra)[0]
                       for _ in range(2))
        startup = startup_of(f"one-{tag}")
        best["startup_s"] = startup
        best["startup_heuristic_s"] = startup_of(f"one-{tag}-heuristic", HEURISTIC)
        best["vs_ceiling"] = best["spotbatch"] / best["ceiling"]
        best["heuristic_vs_ceiling"] = best["spotbatch_heuristic"] / best["ceiling"]
        best["vs_ceiling_iobinding"] = best["spotbatch"] / best["ceiling_iobinding"]
        best["vs_ceiling_without_startup"] = a.images / (a.images / best["spotbatch"] - startup) / best["ceiling"]
        res["items_per_s"][tag] = best
        print(f"{tag} best of {a.repeat}: spotbatch / session.run ceiling = {best['vs_ceiling']:.3f}, "
              f"/ IO-binding ceiling = {best['vs_ceiling_iobinding']:.3f}; start-up {startup:.2f} s, without it "
              f"spotbatch / ceiling = {best['vs_ceiling_without_startup']:.3f}; with heuristic conv search "
              f"spotbatch / ceiling = {best['heuristic_vs_ceiling']:.3f} (start-up "
              f"{best['startup_heuristic_s']:.2f} s)", flush=True)
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
