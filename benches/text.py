#!/usr/bin/env python3
"""Text embedding benchmark on the CPU: all-MiniLM-L6-v2 (examples/text/minilm.py's ONNX graph) over
N documents of the standard-library docstring corpus (examples/text/make_corpus.py), all in one run,
the same ONNX file and session options for every row:

  python     what a user writes in Python: HF `tokenizers` + onnxruntime with sentence-transformers'
             encode() algorithm (sort the whole input by text length, longest first; batches of 32,
             truncation to --max-length, padded to each batch's longest; mean pooling over the
             attention mask; L2 normalisation; rows back in input order), reading the JSONL and
             writing JSONL rows {"id", "embedding"}; everything is timed, session creation included;
  ceiling    onnxruntime's raw session.run on pre-tokenized batches of 32 sorted by token length
             (the least padding possible): only session.run is timed;
  spotbatch  `spotbatch run` on a manifest with [input] format = "jsonl", [preprocess] kind = "text",
             [postprocess] kind = "embedding" (run_spotbatch below); until the worker takes text
             inputs, `spotbatch validate` refuses the manifest and its row says pending.

Prints docs/s and padding efficiency (real tokens / padded tokens) of each, the ratios, and writes
bench-work/text/results-N.json.

usage: text.py [--docs N ...] [--batch 32] [--max-length 128] [--repeat 1]   (make bench-text)
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench-work" / "text"
sys.path.insert(0, str(ROOT / "examples" / "text"))
import make_corpus  # noqa: E402
import minilm  # noqa: E402

MODEL_DIR = ROOT / "examples" / "text" / "model"
MODEL = MODEL_DIR / minilm.MODEL_FILE
TOKENIZER = MODEL_DIR / minilm.TOKENIZER_FILE


def session():
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])


def padding_efficiency(lengths_in_batches):
    """Real tokens / padded tokens, each batch padded to its longest item."""
    real = sum(sum(b) for b in lengths_in_batches)
    padded = sum(len(b) * max(b) for b in lengths_in_batches if b)
    return real / padded


def batches_of(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def bench_python(corpus: Path, out: Path, batch: int, max_length: int):
    """sentence-transformers' encode() on tokenizers + onnxruntime. Returns (docs/s, padding eff.)."""
    t0 = time.perf_counter()
    sess = session()
    tok = minilm.load_tokenizer(TOKENIZER, max_length, pad_to_longest=True)
    ids, texts = [], []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ids.append(r["id"])
            texts.append(r["text"])
    order = np.argsort([-len(t) for t in texts], kind="stable")
    embeddings = [None] * len(texts)
    lengths = []
    for chunk in batches_of(order, batch):
        encs = tok.encode_batch([texts[i] for i in chunk])
        x = minilm.batch_feeds(encs)
        hidden = sess.run(["last_hidden_state"], x)[0]
        mask = x["attention_mask"].astype(np.float32)[..., None]
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        for i, e in zip(chunk, pooled):
            embeddings[i] = e
        lengths.append([sum(e.attention_mask) for e in encs])
    with open(out, "w") as f:
        for i, e in zip(ids, embeddings):
            f.write(json.dumps({"id": i, "embedding": e.tolist()}) + "\n")
    return len(texts) / (time.perf_counter() - t0), padding_efficiency(lengths)


def bench_ceiling(corpus: Path, batch: int, max_length: int):
    """session.run alone on batches sorted by token length. Returns (docs/s, padding efficiency)."""
    tok = minilm.load_tokenizer(TOKENIZER, max_length, pad_to_longest=False)
    with open(corpus, encoding="utf-8") as f:
        encs = tok.encode_batch([json.loads(line)["text"] for line in f])
    encs.sort(key=lambda e: len(e.ids))
    prepared = [minilm.batch_feeds(chunk) for chunk in batches_of(encs, batch)]
    lengths = [list(x["attention_mask"].sum(1)) for x in prepared]
    sess = session()
    sess.run(["last_hidden_state"], prepared[len(prepared) // 2])  # warm-up
    t0 = time.perf_counter()
    for x in prepared:
        sess.run(["last_hidden_state"], x)
    return len(encs) / (time.perf_counter() - t0), padding_efficiency(lengths)


def file_order_efficiency(corpus: Path, batch: int, max_length: int):
    """Padding efficiency of batches taken in file order (what a runner without length-aware
    batching gets)."""
    tok = minilm.load_tokenizer(TOKENIZER, max_length, pad_to_longest=False)
    with open(corpus, encoding="utf-8") as f:
        lengths = [len(e.ids) for e in tok.encode_batch([json.loads(line)["text"] for line in f])]
    return padding_efficiency(batches_of(lengths, batch)), lengths


PADDING_EXAMPLE = ROOT / "target" / "release" / "examples" / "padding"


def batcher_efficiency(corpus: Path, batch: int, max_length: int):
    """spotbatch-text's length-aware batcher on the corpus in file order (text/examples/padding.rs,
    tokenized by the Rust tokenizer): its JSON summary, or None when the example is not built."""
    if not PADDING_EXAMPLE.is_file():
        return None
    out = subprocess.run([str(PADDING_EXAMPLE), str(corpus), str(TOKENIZER), str(max_length), str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# spotbatch's row. It works once the worker takes text inputs ([input] format = "jsonl",
# [preprocess] kind = "text", [postprocess] kind = "embedding"); until then `spotbatch validate`
# refuses the manifest and this returns None with the reason, and the script prints the Python rows.

SPOTBATCH = ROOT / "target" / "release" / "spotbatch"


def spotbatch_manifest(corpus: Path, batch: int, max_length: int) -> str:
    return f"""name = "text-bench"

[input]
format = "jsonl"
uri = "{corpus}"
id_column = "id"

[model]
uri = "{MODEL}"
batch_size = {batch}

[preprocess]
kind = "text"
text_column = "text"
tokenizer = "{TOKENIZER}"
max_length = {max_length}

[postprocess]
kind = "embedding"
pooling = "mean"
normalize = true

[output]
uri = "./out"
format = "jsonl"
"""


def run_spotbatch(corpus: Path, n: int, batch: int, max_length: int, python_rows: Path):
    """Runs `spotbatch run` on the corpus. Returns ((docs/s, min cosine vs the Python rows), None)
    or (None, why it is pending)."""
    if not SPOTBATCH.is_file():
        return None, f"{SPOTBATCH} not built (make bench-text builds it)"
    job = WORK / f"spotbatch-{n}"
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    manifest = job / "job.toml"
    manifest.write_text(spotbatch_manifest(corpus, batch, max_length))
    env = dict(os.environ)
    check = subprocess.run([str(SPOTBATCH), "validate", str(manifest)], capture_output=True, text=True, env=env)
    if check.returncode != 0:
        why = (check.stderr.strip() or check.stdout.strip()).splitlines()
        return None, "spotbatch validate refuses the text manifest: " + "; ".join(why[:3])
    t0 = time.perf_counter()
    out = subprocess.run([str(SPOTBATCH), "run", str(manifest), "--progress", "none"], capture_output=True,
                         text=True, env=env)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"spotbatch run failed ({out.returncode}): {out.stderr[-2000:]}")
    ours = {}
    for part in sorted((job / "out").rglob("part-*.jsonl")):
        for line in open(part, encoding="utf-8"):
            r = json.loads(line)
            ours[r["id"]] = r.get("embedding")
    if len(ours) != n:
        raise SystemExit(f"spotbatch wrote {len(ours)} rows for {n} documents")
    worst = 1.0
    for line in open(python_rows, encoding="utf-8"):
        r = json.loads(line)
        a, b = np.asarray(ours[r["id"]], np.float64), np.asarray(r["embedding"], np.float64)
        worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return (n / dt, worst), None


def bench(n: int, batch: int, max_length: int, repeat: int) -> dict:
    corpus, _ = make_corpus.bench_corpus(WORK, n)
    file_eff, lengths = file_order_efficiency(corpus, batch, max_length)
    print(f"{n} docs ({corpus}): tokens per doc (truncated to {max_length}) mean {np.mean(lengths):.1f}, "
          f"median {int(np.median(lengths))}, {np.mean(np.array(lengths) >= max_length):.1%} truncated; "
          f"padding efficiency in file order {file_eff:.3f}", flush=True)
    padding = batcher_efficiency(corpus, batch, max_length)
    if padding is None:
        print(f"length-aware batcher: {PADDING_EXAMPLE} not built (make bench-text builds it)")
    else:
        print(f"padding efficiency, batches of {batch}: file order {padding['file_order']:.3f}, "
              f"spotbatch-text's batcher (window {padding['batcher_window']}) {padding['batcher']:.3f}, "
              f"whole input sorted {padding['full_sort']:.3f}", flush=True)
    best = {}
    python_rows = WORK / f"python-{n}.jsonl"
    for r in range(repeat):
        for name, fn in (("python", lambda: bench_python(corpus, python_rows, batch, max_length)),
                         ("ceiling", lambda: bench_ceiling(corpus, batch, max_length))):
            rate, eff = fn()
            print(f"run {r + 1}: {name:9s} {rate:7.1f} docs/s  padding efficiency {eff:.3f}", flush=True)
            if rate > best.get(name, (0.0, 0.0))[0]:
                best[name] = (rate, eff)
    res = {"date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
           "onnxruntime": ort.__version__, "docs": n, "batch": batch, "max_length": max_length,
           "mean_tokens": float(np.mean(lengths)), "file_order_padding_efficiency": file_eff,
           "docs_per_s": {k: v[0] for k, v in best.items()},
           "padding_efficiency": {k: v[1] for k, v in best.items()},
           "python_vs_ceiling": best["python"][0] / best["ceiling"][0], "batcher": padding}
    print(f"{n} docs, best of {repeat}: python {best['python'][0]:.1f} docs/s (padding {best['python'][1]:.3f}), "
          f"ceiling {best['ceiling'][0]:.1f} docs/s (padding {best['ceiling'][1]:.3f}); "
          f"python / ceiling = {res['python_vs_ceiling']:.3f}")
    got, pending = run_spotbatch(corpus, n, batch, max_length, python_rows)
    if got is None:
        print(f"spotbatch: pending ({pending})")
        res["spotbatch"] = {"pending": pending}
    else:
        rate, cos = got
        res["docs_per_s"]["spotbatch"] = rate
        res["spotbatch"] = {"vs_ceiling": rate / best["ceiling"][0], "vs_python": rate / best["python"][0],
                            "min_cosine_vs_python": cos}
        print(f"spotbatch {rate:.1f} docs/s: spotbatch / ceiling = {rate / best['ceiling'][0]:.3f}   "
              f"spotbatch / python = {rate / best['python'][0]:.3f}   min cosine vs the Python rows {cos:.7f}")
    with open(WORK / f"results-{n}.json", "w") as f:
        json.dump(res, f, indent=1)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[20000])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if minilm.main([str(MODEL_DIR)]) != 0:
        return 1
    for n in a.docs:
        bench(n, a.batch, a.max_length, a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
