#!/usr/bin/env python3
"""Builds the digits demo: trains a small classifier on scikit-learn's bundled digits data set,
exports it to ONNX (built node by node with `onnx`), and writes the held-out test images as PNGs
under images/<true label>/, plus labels.txt. Deterministic: same seed, same files.

Run from anywhere: python examples/digits/make_demo.py
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main() -> int:
    digits = load_digits()
    # The data set's pixels are 0..16; images store them as 0..255 bytes. Train on exactly what the
    # PNGs hold (bytes / 255), so the pipeline's input is the model's training distribution.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x = pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0
    idx = np.arange(len(x))
    tr, te = train_test_split(idx, test_size=0.3, random_state=0, stratify=digits.target)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=0)
    clf.fit(x[tr], digits.target[tr])
    sk_acc = float((clf.predict(x[te]) == digits.target[te]).mean())

    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spotbatch-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, "model.onnx"))

    images = os.path.join(HERE, "images")
    for i in te:
        label = int(digits.target[i])
        folder = os.path.join(images, str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(os.path.join(folder, f"{i:04d}.png"), optimize=False)
    with open(os.path.join(HERE, "labels.txt"), "w") as f:
        f.write("\n".join(NAMES) + "\n")

    # The exported graph must agree with scikit-learn on the test images.
    import onnxruntime as ort

    sess = ort.InferenceSession(os.path.join(HERE, "model.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"pixels": x[te].reshape(-1, 1, 8, 8)})[0]
    onnx_acc = float((probs.argmax(1) == digits.target[te]).mean())
    if abs(onnx_acc - sk_acc) > 1e-9:
        print(f"ONNX accuracy {onnx_acc} differs from scikit-learn's {sk_acc}", file=sys.stderr)
        return 1
    print(f"digits demo: {len(te)} test images, accuracy {onnx_acc:.4f} (scikit-learn and ONNX agree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
