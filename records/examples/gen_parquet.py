"""Writes the plan-scale dataset with pyarrow: FILES Parquet files of ROWS rows each (default 100 x
100 000 = 10 million rows), row groups of GROUP rows, columns id (int64) and text (string), snappy
(pyarrow's default). Usage: python gen_parquet.py DIR [FILES [ROWS [GROUP]]]"""
import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
given = [int(a) for a in sys.argv[2:5]]
files, rows, group = given + [100, 100_000, 10_000][len(given):]
words = ["spot", "batch", "inference", "shard", "lease", "queue", "worker", "model"]
os.makedirs(out, exist_ok=True)
t = time.time()
for f in range(files):
    base = f * rows
    ids = pa.array(range(base, base + rows), pa.int64())
    text = pa.array([f"{words[i % 8]} {words[(i >> 3) % 8]} {words[(i >> 6) % 8]} #{i}" for i in range(base, base + rows)])
    pq.write_table(pa.table({"id": ids, "text": text}), f"{out}/part-{f:05}.parquet", row_group_size=group)
print(f"wrote {files} files x {rows} rows (row groups of {group}) in {time.time() - t:.1f} s")
