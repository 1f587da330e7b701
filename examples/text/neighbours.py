#!/usr/bin/env python3
"""Nearest docstrings to a few questions, from the embeddings `spotbatch run examples/text/job.toml`
wrote: each question is embedded with the same ONNX model through onnxruntime (mean pooling, L2
normalised, as the job did), and the rows with the highest cosine similarity are printed with
their source and the start of their text.

usage: neighbours.py OUTPUT_JOB_FOLDER [QUESTION ...]
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import minilm  # noqa: E402

QUESTIONS = [
    "How do I read a file line by line?",
    "compress data with gzip",
    "parse command-line options",
    "run a function in another thread",
]


def main(argv) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    questions = argv[1:] or QUESTIONS
    rows = []
    for part in sorted(out.glob("part-*.jsonl")):
        for line in part.read_text().splitlines():
            r = json.loads(line)
            if r.get("embedding") is not None:
                rows.append(r)
    if not rows:
        print(f"{out}: no embeddings", file=sys.stderr)
        return 1
    texts = {}
    for line in (HERE / "data" / "docs.jsonl").read_text().splitlines():
        d = json.loads(line)
        texts[d["id"]] = d["text"]
    m = np.array([r["embedding"] for r in rows], dtype=np.float32)
    tok = minilm.load_tokenizer(HERE / "model" / "tokenizer.json", 128, pad_to_longest=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(HERE / "model" / "minilm.onnx"), so, providers=["CPUExecutionProvider"])
    enc = tok.encode_batch(questions)
    feeds = minilm.batch_feeds(enc)
    names = {i.name for i in sess.get_inputs()}
    hidden = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    q = minilm.normalize(minilm.mean_pool(hidden, feeds["attention_mask"]))
    sims = q @ m.T
    print(f"{len(rows)} docstrings embedded by spotbatch; nearest to each question:")
    for qi, question in enumerate(questions):
        print(f"\n  {question}")
        for j in np.argsort(-sims[qi])[:3]:
            r = rows[j]
            snippet = " ".join(texts.get(r["id"], "").split())[:90]
            print(f"    {sims[qi, j]:.3f}  {r['source']}: {snippet}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
