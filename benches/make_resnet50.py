#!/usr/bin/env python3
"""Builds a ResNet-50-shaped ONNX model (the real architecture: bottleneck blocks [3, 4, 6, 3],
random He-initialised weights, fixed seed, batch norm folded into the convolutions as exporters do
for inference): input "input" [batch, 3, 224, 224], output "logits" [batch, 1000].

usage: make_resnet50.py OUT.onnx [--fp16]
  --fp16   weights, input and output in float16 (as an fp16 export would be)
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(50)
nodes, inits = [], []
DT = np.float32


def conv(x, cin, cout, k, stride, name, relu=True, gain=1.0):
    w = (rng.standard_normal((cout, cin, k, k)) * gain * np.sqrt(2.0 / (cin * k * k))).astype(DT)
    b = np.zeros(cout, dtype=DT)
    inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
    if not relu:
        return f"{name}.y"
    nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
    return f"{name}.r"


def bottleneck(x, cin, mid, stride, name):
    cout = mid * 4
    y = conv(x, cin, mid, 1, 1, f"{name}.c1")
    y = conv(y, mid, mid, 3, stride, f"{name}.c2")
    # the last convolution of a residual branch starts small, as in zero-init-residual training,
    # so activations stay in range through 16 blocks (also in fp16)
    y = conv(y, mid, cout, 1, 1, f"{name}.c3", relu=False, gain=0.2)
    short = conv(x, cin, cout, 1, stride, f"{name}.down", relu=False) if (stride != 1 or cin != cout) else x
    nodes.append(helper.make_node("Add", [y, short], [f"{name}.sum"]))
    nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
    return f"{name}.out"


def main() -> int:
    global DT
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    fp16 = "--fp16" in sys.argv[2:]
    DT = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, (mid, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            x = bottleneck(x, cin, mid, stride, f"layer{stage + 1}.{i}")
            cin = mid * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = (rng.standard_normal((2048, 1000)) * np.sqrt(1.0 / 2048)).astype(DT)
    inits.extend([numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(1000, DT), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]))
    graph = helper.make_graph(nodes, "resnet50_shaped",
                              [helper.make_tensor_value_info("input", elem, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", elem, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spotbatch-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
