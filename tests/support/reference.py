#!/usr/bin/env python3
"""Reference scores for the end-to-end tests: runs a model with onnxruntime's Python API on the same
pixels spotbatch feeds it (Pillow decode, gray, x/255, NCHW), printing {key: [scores...]} as JSON.

usage: reference.py MODEL.onnx IMAGES_DIR INPUT_NAME
"""
import glob
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> int:
    model, images, input_name = sys.argv[1:4]
    keys = sorted(os.path.relpath(p, images).replace(os.sep, "/")
                  for p in glob.glob(os.path.join(images, "**", "*.png"), recursive=True))
    x = np.stack([np.asarray(Image.open(os.path.join(images, k)).convert("L"), dtype=np.float32) / 255.0
                  for k in keys])[:, None, :, :]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = sess.run(None, {input_name: x})[0]
    json.dump({k: [float(v) for v in row] for k, row in zip(keys, out)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
