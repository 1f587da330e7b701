#!/usr/bin/env python3
"""Text corpora from real text that ships with every Python: the standard library's docstrings
(modules, classes, functions, methods), read with `ast` (nothing is imported, so no module's import
side effects run), deduplicated, from a couple of words to many paragraphs.

Rows are {"id": int, "text": str, "source": "module.qualname"}; ids count up in file order and the
order is a fixed-seed shuffle (a corpus in no particular order, as a streaming runner meets it).
Written as JSONL and as Parquet (pyarrow, several row groups), the same rows in both.

  demo   DIR/docs.jsonl, DIR/docs.parquet: N docstrings (default 3000) sampled from the unique ones
  bench  DIR/bench-N.jsonl, DIR/bench-N.parquet: N docs (default 20000): every unique docstring,
         then new docs made by joining 1-6 paragraphs drawn from them, so lengths stay varied
  bad    DIR/bad.jsonl: good rows with deliberately bad ones between them (a malformed JSON line,
         a row without "text", null text, a number and a list as text, invalid UTF-8, CRLF, no
         final newline), DIR/bad.parquet (a null text) and DIR/bad.expect.json saying which row
         is which (line number, id, and whether it must become an error row)

Every file is written to a temporary name and renamed, and skipped when it exists, so reruns are
free. The text depends on the Python version's standard library (3.11 here).

usage: make_corpus.py demo|bench|bad|all [--out DIR] [--docs N]
"""
import argparse
import ast
import json
import os
import random
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data"
# Folders of the standard library left out: the test suite, IDLE, 2to3's fixers, the bundled
# wheels, tkinter demos and pydoc's generated topics (not prose written as docstrings).
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
             "__pycache__"}
SEED = 20


@lru_cache(maxsize=1)
def stdlib_docstrings():
    """[(source, text)] for every module, class and function docstring in the standard library,
    in a stable order, first occurrence of each text (compared with whitespace collapsed) kept."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(f for f in filenames if f.endswith(".py")):
            path = Path(dirpath) / name
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for source, text in _docstrings(tree, ".".join(parts)):
                key = " ".join(text.split())
                if len(key.split()) < 2 or key in seen:
                    continue
                seen.add(key)
                out.append((source, text))
    return tuple(out)


def _docstrings(node, qualname):
    doc = ast.get_docstring(node, clean=True)
    if doc:
        yield qualname, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{qualname}.{child.name}")


def _rows(pairs):
    return [{"id": i, "text": text, "source": source} for i, (source, text) in enumerate(pairs)]


def demo_rows(n):
    docs = stdlib_docstrings()
    rng = random.Random(SEED)
    return _rows(rng.sample(docs, min(n, len(docs))))


def bench_rows(n):
    """Every unique docstring, then joins of 1-6 paragraphs drawn from them (a paragraph is a block
    between blank lines), with a length mix close to the docstrings' own, until there are n."""
    docs = stdlib_docstrings()
    rng = random.Random(SEED)
    pairs = list(docs)
    rng.shuffle(pairs)
    pairs = pairs[:n]
    paragraphs = [(src, p.strip()) for src, text in docs for p in text.split("\n\n") if len(p.split()) >= 2]
    seen = {" ".join(t.split()) for _, t in pairs}
    while len(pairs) < n:
        k = rng.choice([1, 1, 1, 2, 2, 3, 4, 6])
        chosen = [paragraphs[rng.randrange(len(paragraphs))] for _ in range(k)]
        text = "\n\n".join(p for _, p in chosen)
        key = " ".join(text.split())
        if key in seen:
            continue
        seen.add(key)
        pairs.append(("+".join(src for src, _ in chosen), text))
    rng.shuffle(pairs)
    return _rows(pairs)


def _write_atomic(path: Path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_jsonl(path: Path, rows):
    def w(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    _write_atomic(path, w)


def write_parquet(path: Path, rows, row_groups=4):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array([r["id"] for r in rows], pa.int64()),
                      "text": pa.array([r["text"] for r in rows], pa.string()),
                      "source": pa.array([r["source"] for r in rows], pa.string())})
    size = max(1, -(-len(rows) // row_groups))
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=size))


def write_corpus(out: Path, stem: str, rows_fn):
    """OUT/STEM.jsonl and OUT/STEM.parquet, made only when missing. Returns the two paths."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = out / f"{stem}.jsonl", out / f"{stem}.parquet"
    if not (jsonl.is_file() and parquet.is_file()):
        rows = rows_fn()
        write_jsonl(jsonl, rows)
        write_parquet(parquet, rows)
        print(f"{jsonl}, {parquet}: {len(rows)} docs")
    else:
        print(f"{jsonl}, {parquet}: up to date")
    return jsonl, parquet


def bench_corpus(out: Path, n: int):
    return write_corpus(out, f"bench-{n}", lambda: bench_rows(n))


def demo_corpus(out: Path, n: int = 3000):
    return write_corpus(out, "docs", lambda: demo_rows(n))


def bad_corpus(out: Path):
    """bad.jsonl, bad.parquet and bad.expect.json (see the module's docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "bad.jsonl", out / "bad.parquet", out / "bad.expect.json"
    if all(p.is_file() for p in paths):
        print(f"{paths[0]}, {paths[1]}: up to date")
        return paths
    good = [text for _, text in stdlib_docstrings()[:6]]
    good_line = lambda i, t: (json.dumps({"id": i, "text": t, "source": "good"}) + "\n").encode()  # noqa: E731
    lines = [  # (bytes of the line, id or None, error expected, what it is)
        (good_line(0, good[0]), 0, False, "good"),
        (b'{"id": 1, "text": "an unterminated string}\n', None, True, "malformed JSON"),
        (good_line(2, good[1]), 2, False, "good"),
        (b'{"id": 3, "source": "no text field"}\n', 3, True, "missing text"),
        (b'{"id": 4, "text": null}\n', 4, True, "null text"),
        (b'{"id": 5, "text": 42}\n', 5, True, "non-string text (number)"),
        (b'{"id": 6, "text": ["a", "list"]}\n', 6, True, "non-string text (list)"),
        (b'{"id": 7, "text": "caf\xc3\xa9 ok then \xff\xfe broken"}\n', 7, True, "invalid UTF-8"),
        (good_line(8, good[2]).replace(b"\n", b"\r\n"), 8, False, "good, CRLF line ending"),
        (b'{"id": 9, "text": ""}\n', 9, False, "empty text (valid: [CLS] [SEP])"),
        (good_line(10, "word " * 600), 10, False, "good, truncated to max_length"),
        (b"\n", None, False, "blank line (skipped, no row)"),
        (b"[1, 2, 3]\n", None, True, "JSON that is not an object"),
        (good_line(11, good[3]).rstrip(b"\n"), 11, False, "good, last line without a newline"),
    ]
    data = b"".join(line for line, *_ in lines)
    _write_atomic(paths[0], lambda tmp: tmp.write_bytes(data))
    expect = [{"line": n + 1, "id": i, "error": err, "what": what} for n, (_, i, err, what) in enumerate(lines)]
    _write_atomic(paths[2], lambda tmp: tmp.write_text(json.dumps(expect, indent=1) + "\n"))

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array([0, 1, 2], pa.int64()),
                      "text": pa.array([good[4], None, good[5]], pa.string()),
                      "source": pa.array(["good", "null text", "good"], pa.string())})
    _write_atomic(paths[1], lambda tmp: pq.write_table(table, tmp, row_group_size=2))
    print(f"{paths[0]}, {paths[1]}: {sum(1 for *_, e, _w in lines if e)} bad JSONL rows, 1 null text in Parquet")
    return paths


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["demo", "bench", "bad", "all"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--docs", type=int, help="documents (demo: 3000, bench: 20000)")
    a = ap.parse_args(argv)
    if a.what in ("demo", "all"):
        demo_corpus(a.out, a.docs or 3000)
    if a.what in ("bad", "all"):
        bad_corpus(a.out)
    if a.what == "bench":
        bench_corpus(a.out, a.docs or 20000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
