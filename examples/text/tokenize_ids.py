#!/usr/bin/env python3
"""Token ids from the Python `tokenizers` package, for comparing with spotbatch's Rust tokenizer:
reads a JSONL file of {"id", "text"} rows (rows without a string text are skipped) and prints one
line per row, {"id", "ids", "type_ids"}, tokenized with TOKENIZER truncated to MAX_LENGTH
(longest first) and unpadded.

usage: tokenize_ids.py CORPUS.jsonl TOKENIZER.json MAX_LENGTH
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm  # noqa: E402


def main(argv) -> int:
    corpus, tokenizer, max_length = argv[0], argv[1], int(argv[2])
    tok = minilm.load_tokenizer(tokenizer, max_length, pad_to_longest=False)
    rows = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if isinstance(r.get("text"), str):
                rows.append(r)
    out = sys.stdout
    for r, e in zip(rows, tok.encode_batch([r["text"] for r in rows])):
        out.write(json.dumps({"id": r["id"], "ids": e.ids, "type_ids": e.type_ids}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
