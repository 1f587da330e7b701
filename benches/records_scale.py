"""Records at scale (issue 20's scale figures), through the release binary:

1. plan: a Parquet dataset of 10 million rows in 100 files (records/examples/gen_parquet.py, as
   pyarrow writes them) planned and enqueued by `spotbatch enqueue` onto a SQLite queue: wall time
   and the process's peak RSS (it also checks the manifest: tokenizer, model, the text column);
2. stream: one JSONL file of --jsonl-gb GB (the standard-library docstrings repeated, fresh ids)
   worked by `spotbatch run` with a token-counting text model (benches/records_scale.py builds it
   with `onnx`: the real tokenizer, a model that costs nothing, so the figure is the reader's and
   the pipeline's): wall time, rows/s, MB/s and the process's peak RSS, against the file's size.

Peak RSS is the process's own high-water mark (os.wait4's ru_maxrss). Usage:
  python benches/records_scale.py [--rows-files 100] [--jsonl-gb 5] [--skip-plan] [--skip-stream]
Writes into .cache/bench/records/ (about as much disk as the JSONL file, twice over briefly).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPOTBATCH = ROOT / "target/release/spotbatch"
WORK = ROOT / ".cache/bench/records"
TOKENIZER = ROOT / "examples/text/model/tokenizer.json"
DOCS = ROOT / "examples/text/data/docs.jsonl"


def run_measured(args, cwd=None):
    """Runs a command alone; returns (seconds, its peak RSS in MiB, stdout, stderr)."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "stdout.log", "w+") as o, open(WORK / "stderr.log", "w+") as e:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdout=o, stderr=e, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        o.seek(0)
        e.seek(0)
        out, err = o.read(), e.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({code}):\n{err[-3000:]}")
    return dt, usage.ru_maxrss / 1024, out, err


def counting_model(path: Path):
    """A text model that counts each item's tokens: inputs input_ids and attention_mask
    [batch, seq] int64, output n [batch, 1] float (the attention mask summed)."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("n", TensorProto.FLOAT, ["batch", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["maskf", "axes"], ["n"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "count_tokens", [ids, mask], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def manifest(name, uri, fmt, model, out, queue):
    return f"""name = "{name}"

[input]
uri = "{uri}"
format = "{fmt}"
id_column = "id"

[model]
uri = "{model}"
batch_size = 64

[preprocess]
kind = "text"
text_column = "text"
tokenizer = "{TOKENIZER}"
max_length = 128

[postprocess]
kind = "embedding"
pooling = "none"

[output]
uri = "{out}"

[queue]
uri = "{queue}"
shard_size = 100000
"""


def job_manifest(name: str, data: Path, fmt: str) -> Path:
    """A fresh job folder WORK/NAME with its manifest (its own queue and output); the manifest's
    path."""
    job = WORK / name
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    m = job / "job.toml"
    m.write_text(manifest(f"{name}-scale", data, fmt, WORK / "count.onnx", job / "out",
                          f"sqlite://{job / 'q.db'}"))
    return m


def plan(files: int):
    data = WORK / "pq"
    if not (data / f"part-{files - 1:05}.parquet").exists():
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run([sys.executable, str(ROOT / "records/examples/gen_parquet.py"), str(data),
                        str(files)], check=True)
    rows = files * 100_000
    m = job_manifest("plan", data, "parquet")
    dt, peak, out, err = run_measured([str(SPOTBATCH), "enqueue", str(m)])
    print(f"plan: {rows:,} Parquet rows in {files} files planned and enqueued in {dt:.2f} s, "
          f"peak RSS {peak:.0f} MiB; {out.strip()}")
    return {"rows": rows, "files": files, "seconds": dt, "peak_rss_mib": peak}


def stream(gb: float):
    data = WORK / "big.jsonl"
    want = int(gb * 1e9)
    if not data.exists() or data.stat().st_size < want:
        docs = [json.loads(line)["text"] for line in open(DOCS, encoding="utf-8")]
        t = time.perf_counter()
        n = 0
        with open(data, "w", encoding="utf-8", buffering=1 << 22) as f:
            size = 0
            while size < want:
                for text in docs:
                    line = json.dumps({"id": n, "text": text}) + "\n"
                    f.write(line)
                    size += len(line.encode())
                    n += 1
                    if size >= want:
                        break
        print(f"wrote {data} ({size / 1e9:.2f} GB, {n:,} rows) in {time.perf_counter() - t:.0f} s")
    size = data.stat().st_size
    m = job_manifest("stream", data, "jsonl")
    job = m.parent
    dt, peak, out, err = run_measured([str(SPOTBATCH), "run", str(m), "--progress", "none"])
    rows = 0
    for part in (job / "out").rglob("part-*.jsonl"):
        with open(part, "rb") as f:
            rows += sum(1 for _ in f)
    print(f"stream: {size / 1e9:.2f} GB JSONL, {rows:,} rows worked in {dt:.0f} s "
          f"({rows / dt:,.0f} rows/s, {size / dt / 1e6:.1f} MB/s), peak RSS {peak:.0f} MiB "
          f"({peak * 2**20 / size:.4f} of the file); {out.strip()}")
    shutil.rmtree(job / "out", ignore_errors=True)
    return {"bytes": size, "rows": rows, "seconds": dt, "peak_rss_mib": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows-files", type=int, default=100)
    ap.add_argument("--jsonl-gb", type=float, default=5.0)
    ap.add_argument("--skip-plan", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    a = ap.parse_args()
    if not SPOTBATCH.is_file():
        sys.exit(f"{SPOTBATCH} not built (cargo build --release)")
    WORK.mkdir(parents=True, exist_ok=True)
    counting_model(WORK / "count.onnx")
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    res = {}
    if not a.skip_plan:
        res["plan"] = plan(a.rows_files)
    if not a.skip_stream:
        res["stream"] = stream(a.jsonl_gb)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
