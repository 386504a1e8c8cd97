"""A tiny hand-built ONNX 'encoder' carrying our metadata (no torch needed).

The graph computes ``embedding = mean_s(mean_hw(frames) @ weight) + bias``: it sees
each crop's mean colour, so its output has a closed form in numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from polypindex.model.data.config import FragmentConfig, PreprocessConfig


def onnx_metadata(
    version: str,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    dim: int,
    reid_threshold: str,
) -> dict[str, str]:
    """The ``polypindex.*`` metadata properties an exported encoder carries."""
    return {
        "polypindex.format": "polypindex-onnx/1",
        "polypindex.encoder_version": version,
        "polypindex.preprocess": preprocess.to_json(),
        "polypindex.fragment": json.dumps(fragment.to_dict()),
        "polypindex.encoder_config": "{}",
        "polypindex.embedding_dim": str(dim),
        "polypindex.reid_threshold": reid_threshold,
    }


def write_mean_colour_encoder(
    path: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    metadata: dict[str, str],
    *,
    im_size: int,
    graph_name: str = "mean_colour_encoder",
) -> Path:
    """Save the graph ``[batch, seq, 3, im_size, im_size] → [batch, D]`` (``D`` = the
    columns of ``weight``, a float32 ``(3, D)``) with ``metadata`` as its properties."""
    dim = weight.shape[1]
    frames = helper.make_tensor_value_info(
        "frames", TensorProto.FLOAT, ["batch", "seq", 3, im_size, im_size]
    )
    embedding = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    nodes = [
        helper.make_node("ReduceMean", ["frames", "hw_axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["tokens"]),
        helper.make_node("ReduceMean", ["tokens", "seq_axis"], ["mean"], keepdims=0),
        helper.make_node("Add", ["mean", "bias"], ["embedding"]),
    ]
    init = [
        numpy_helper.from_array(np.asarray([3, 4], dtype=np.int64), "hw_axes"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
    ]
    graph = helper.make_graph(nodes, graph_name, [frames], [embedding], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
