"""The ONNX Runtime backend: a predictor whose forward pass runs the model's exported ONNX graph."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.inference.interchange import ExportError, write_onnx
from models.inference.predictor import Predictor


class OnnxRuntimePredictor(Predictor):
    """The same predictor with its forward pass run by ONNX Runtime on the exported graph (CPU).

    Inputs are prepared exactly as for the torch backend; the graph applies the softmax itself."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device = torch.device("cpu")):
        import onnxruntime

        if device.type != "cpu":
            raise ExportError(f"the onnxruntime backend runs on the CPU here, not {device}")
        super().__init__(model, meta, device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # From a file, not from bytes: onnxruntime keeps bytes it was given for the session's life,
        # a second copy of the weights beside the session's own. The module is a third: dropped.
        with tempfile.TemporaryDirectory(prefix="trainyard-onnx-") as folder:
            graph = Path(folder) / "model.onnx"
            write_onnx(self, graph)
            self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.model = None
        # A pass with this option hands the arena's free memory back: an evaluation's large batches
        # would otherwise keep their activations' peak reserved for the life of the session.
        self._shrink = onnxruntime.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            batch = self.to_input(batch)
        (outputs,) = self.session.run(None, {"input": np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return torch.from_numpy(outputs)

    def release_memory(self) -> None:
        """Shrink the session's arena to what one example needs."""
        self.session.run(None, {"input": np.zeros((1, *self.meta["input_shape"]), np.float32)}, self._shrink)


PREDICTORS = {"torch": Predictor, "onnxruntime": OnnxRuntimePredictor}
