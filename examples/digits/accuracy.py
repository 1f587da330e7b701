#!/usr/bin/env python3
"""Prints the top-1 accuracy of a digits job's output rows against the true labels, which are the
first folder of each key (images/<label>/NNNN.png). Exits non-zero if any input is missing or
duplicated, or if any row carries an error.

usage: accuracy.py OUTPUT_DIR IMAGES_DIR
OUTPUT_DIR is the manifest's output.uri: it must hold exactly one job folder.
"""
import glob
import json
import os
import sys


def main() -> int:
    out_root, images = sys.argv[1], sys.argv[2]
    jobs = [d for d in glob.glob(os.path.join(out_root, "*")) if os.path.isdir(d)]
    if len(jobs) != 1:
        print(f"{out_root}: expected one job folder, found {len(jobs)}", file=sys.stderr)
        return 1
    out_dir = jobs[0]
    rows = {}
    for part in sorted(glob.glob(os.path.join(out_dir, "part-*.jsonl"))):
        with open(part, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row["key"] in rows:
                    print(f"duplicate row for {row['key']}", file=sys.stderr)
                    return 1
                rows[row["key"]] = row
    inputs = {os.path.relpath(p, images).replace(os.sep, "/") for p in glob.glob(os.path.join(images, "**", "*.png"), recursive=True)}
    missing = inputs - rows.keys()
    if missing:
        print(f"{len(missing)} inputs have no row, e.g. {sorted(missing)[:3]}", file=sys.stderr)
        return 1
    errors = [r for r in rows.values() if r["error"]]
    if errors:
        print(f"{len(errors)} rows have errors, e.g. {errors[0]}", file=sys.stderr)
        return 1
    correct = sum(1 for k, r in rows.items() if r["top_k"][0]["index"] == int(k.split("/")[0]))
    print(f"accuracy: {correct}/{len(rows)} = {correct / len(rows):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
