"""The frozen backbone's feature cache: while a pretrained model's backbone is frozen it maps each
image to the same features every epoch, so the engine computes them once per model and split and
trains the head alone on them. The cache is a dict the run keeps (TrainingRun.features), keyed by
the model and the dataset, holding one entry at a time."""

from __future__ import annotations

import logging

import torch

from models.data.dataset import Dataset
from models.nets.cost import eval_batch_size
from models.nets.pretrained import Pretrained
from models.training.distributed import Ranks

log = logging.getLogger(__name__)


def set_frozen(pretrained: Pretrained, spec, epoch: int, features: dict) -> bool:
    """Freeze or unfreeze the backbone as the model spec says for this epoch (a change empties the
    cache); True when frozen."""
    frozen = spec.freeze == "backbone" and (spec.unfreeze_at_epoch is None or epoch < spec.unfreeze_at_epoch)
    if pretrained.frozen != frozen:
        if pretrained.frozen:
            log.info(
                "epoch %d: the backbone is unfrozen (unfreeze_at_epoch): the whole network trains from here", epoch
            )
        pretrained.freeze(frozen)
        features.clear()
    return frozen


def features_fit(pretrained: Pretrained, ds: Dataset, max_bytes: int | None, ranks: Ranks | None = None) -> bool:
    """Whether every split's features fit in half the job's memory budget `max_bytes` (always,
    without one); a set too large trains through the frozen backbone every epoch instead. With
    `ranks`, whether they fit on every rank (each machine's worker has its own budget): the ranks
    must all train the head alone, or all the whole network, or their gradients never meet."""
    rows = sum(len(x) for x in (ds.x_train, ds.x_test, ds.x_val) if x is not None)
    fits = max_bytes is None or rows * pretrained.head.in_features * 4 <= max_bytes / 2
    if ranks is not None:
        fits = ranks.sum(0.0 if fits else 1.0)[0] == 0
    return fits


def frozen_features(
    features: dict,
    pretrained: Pretrained,
    ds: Dataset,
    *,
    batch_size: int,
    resize: int | None,
    device: torch.device,
    precision,
    should_stop,
) -> Dataset | None:
    """The dataset with each split's images replaced by the frozen backbone's features (float
    [N, F] on the training device), computed once per model and split; None if stopped meanwhile."""
    key = (id(pretrained), id(ds))
    if key not in features:
        features.clear()
        outputs = {}
        with torch.no_grad():  # not inference_mode: the head's training saves these inputs for backward
            pretrained.backbone.eval()
            for name in ("x_train", "x_test", "x_val"):
                x_all = getattr(ds, name)
                outputs[name] = (
                    None
                    if x_all is None
                    else _features_of(
                        pretrained,
                        ds,
                        x_all,
                        batch_size=batch_size,
                        resize=resize,
                        device=device,
                        precision=precision,
                        should_stop=should_stop,
                    )
                )
                if x_all is not None and outputs[name] is None:
                    return None
        features[key] = ds.replace(mapped=False, **outputs)
    return features[key]


def _features_of(
    pretrained: Pretrained,
    ds: Dataset,
    x_all,
    *,
    batch_size: int,
    resize: int | None,
    device: torch.device,
    precision,
    should_stop,
) -> torch.Tensor | None:
    step = eval_batch_size(x_all.shape[1:], batch_size, resize)
    parts = []
    for start in range(0, len(x_all), step):
        if should_stop():
            return None
        with precision():
            parts.append(pretrained.features(ds.to_float(x_all[start : start + step].to(device))).float())
    return torch.cat(parts) if parts else torch.empty(0, pretrained.head.in_features, device=device)
