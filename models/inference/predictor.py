"""Load a checkpoint and classify inputs exactly as the training data were prepared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import CheckpointError, read_checkpoint
from models.data.contract import InputContract
from models.data.image import ImageError
from models.inference.evaluation import Evaluation, evaluate
from models.nets.archs import build_model
from models.nets.cost import eval_batch_size
from models.nets.state_dict import load_state
from models.spec.job import MODEL_SPEC, JobSpec


class InputError(Exception):
    """One input cannot be used; the message names it and says why."""


@dataclass
class Prediction:
    index: int | None  # None (with label): the top probability is below the threshold
    label: str | None
    probability: float  # the top probability, withheld or not
    top_k: list[dict]
    below_threshold: bool = False


class Predictor:
    """A trained network in eval mode plus the input contract that prepares its inputs."""

    def __init__(self, model: torch.nn.Module, meta: dict, device: torch.device = torch.device("cpu")):
        self.device = device
        self.model = model.to(device).eval()
        self.meta = meta
        try:
            self.contract = InputContract.from_meta(meta)
        except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise CheckpointError(f"the model's input contract is not usable: {str(exc).splitlines()[0]}") from None
        self.classes: list[str] | None = self.contract.classes
        self.task: str = meta["task"]

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device = torch.device("cpu")) -> Predictor:
        state, meta = read_checkpoint(path)
        if "spec" in meta:  # trained here: the job's spec
            spec = JobSpec.model_validate(meta["spec"])
            model_spec, resize = spec.model, spec.resize
        else:  # imported: the architecture (and the side it resizes its inputs to, from an export)
            model_spec, resize = MODEL_SPEC.validate_python(meta["model"]), meta.get("resize")
        outputs = len(meta["classes"]) if meta.get("classes") else 1
        model = build_model(model_spec, meta["input_shape"], outputs, resize=resize)
        load_state(model, state)
        return cls(model, meta, device)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model inputs from uint8 pixels [..., C, H, W] (or a tabular model's raw columns),
        normalised as the training data were."""
        return self.contract.to_float(pixels)

    def decode_pixels(self, data: bytes, filename: str, *, max_pixels: int) -> np.ndarray:
        """Decode one uploaded image into uint8 pixels [C, H, W], converted as the training data were.

        Pixels stay uint8 (and in numpy) so that a batch of them becomes float in one step.
        """
        try:
            return self.contract.decode(data, filename, max_pixels=max_pixels)
        except ImageError as exc:
            raise InputError(str(exc)) from None

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (classification) or predicted values (regression) for a batch, on
        the CPU; a uint8 batch holds image pixels (decode_pixels) and is scaled first, on the
        model's device (so that a GPU receives a quarter of the bytes); a tabular model's batch
        holds its raw columns, standardised here when it was trained so."""
        batch = batch.to(self.device, non_blocking=True)
        if batch.dtype == torch.uint8 or not self.contract.images:
            batch = self.to_input(batch)
        outputs = self.model(batch)
        outputs = torch.softmax(outputs, dim=1) if self.task == "classification" else self.contract.from_target(outputs)
        return outputs.cpu()

    def evaluation_batch(self) -> int:
        """Examples per batch when evaluating a set, sized for the network's own input (after its resize)."""
        resize = JobSpec.model_validate(self.meta["spec"]).resize if "spec" in self.meta else self.meta.get("resize")
        return eval_batch_size(self.meta["input_shape"], resize=resize)

    def warm_up(self) -> None:
        """Run one forward pass so the first real request does not pay for lazy initialisation."""
        self.probabilities(torch.zeros(2, *self.meta["input_shape"]))

    def decode_values(self, rows: list[list[float]], row_names: list[str] | None = None) -> torch.Tensor:
        """Numeric inputs [N, features] for a tabular model, with their width checked; an error names
        a row as `row_names` does (the lines a person typed), else as inputs[i]."""
        if self.contract.images:
            raise InputError("this model takes images, not numeric inputs")
        width = self.meta["input_shape"][0]
        columns = self.contract.columns
        for i, row in enumerate(rows):
            if len(row) != width:
                named = f", in this order: {', '.join(columns)}" if columns else ""
                value = "value" if len(row) == 1 else "values"
                row_name = row_names[i] if row_names else f"inputs[{i}]"
                raise InputError(f"{row_name} has {len(row)} {value}; this model takes {width}{named}")
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), width)

    def label(self, probs: torch.Tensor, top_k: int = 1, threshold: float | None = None) -> list[Prediction]:
        """Predictions with labels and the top_k classes from a batch of probabilities; a row whose
        top probability is below `threshold` has its label and index withheld (None), top_k kept."""
        k = min(max(top_k, 1), probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        results = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=False):
            entries = [
                {"label": self.classes[i], "index": i, "probability": p}
                for p, i in zip(row_values, row_indices, strict=False)
            ]
            top = entries[0]
            withheld = threshold is not None and top["probability"] < threshold
            results.append(
                Prediction(
                    index=None if withheld else top["index"],
                    label=None if withheld else top["label"],
                    probability=top["probability"],
                    top_k=entries,
                    below_threshold=withheld,
                )
            )
        return results

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, **options) -> Evaluation:
        """This classifier's evaluation report (confusion matrix, per-class scores, mistakes, ...) on
        a labelled set, run a batch at a time; `options` go to models.inference.evaluation.evaluate."""
        batch_size = batch_size or self.evaluation_batch()
        batches = [self.probabilities(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        self.release_memory()
        probabilities = torch.cat(batches) if batches else torch.zeros(0, len(self.classes))
        return evaluate(probabilities, y, self.classes, **options)

    def release_memory(self) -> None:
        """Hand back what the forward passes keep cached for larger batches (a GPU's cache; the CPU keeps none)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
