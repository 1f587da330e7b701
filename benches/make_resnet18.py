#!/usr/bin/env python3
"""Builds a ResNet-18-shaped ONNX model (the real architecture, random He-initialised weights,
fixed seed): input "input" [batch, 3, 224, 224] float32, output "logits" [batch, 1000].
Batch norm is folded into the convolutions, as exporters do for inference.

usage: make_resnet18.py OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(18)
nodes, inits = [], []


def conv(x, cin, cout, k, stride, name, relu=True):
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    b = np.zeros(cout, dtype=np.float32)
    inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
    if not relu:
        return f"{name}.y"
    nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
    return f"{name}.r"


def block(x, cin, cout, stride, name):
    y = conv(x, cin, cout, 3, stride, f"{name}.c1")
    y = conv(y, cout, cout, 3, 1, f"{name}.c2", relu=False)
    short = conv(x, cin, cout, 1, stride, f"{name}.down", relu=False) if (stride != 1 or cin != cout) else x
    nodes.append(helper.make_node("Add", [y, short], [f"{name}.sum"]))
    nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
    return f"{name}.out"


def main() -> int:
    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            x = block(x, cin, cout, stride, f"layer{stage + 1}.{i}")
            cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = (rng.standard_normal((512, 1000)) * np.sqrt(1.0 / 512)).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]))
    graph = helper.make_graph(nodes, "resnet18_shaped",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spotbatch-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
