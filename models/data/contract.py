"""A model's input contract: what it expects and how an input becomes what it sees.

One typed object, stored in every checkpoint and export, applied by this code alone in training's
evaluation, /v1/predict, the v2 protocol, the dashboard and the exports:

- images: uint8 pixels [C, H, W] with C = 1 (grey, ITU-R 601-2 luma) or 3 (RGB), any input
  resized to H x W (bilinear), then x / 255 normalised per channel: (x / 255 - mean) / std;
- tabular: `features` float columns, used as they are or standardised per column:
  (x - mean) / std. A tabular model takes its raw columns everywhere (training, predict, the v2
  protocol, its exports), the standardisation being part of it. A regression model standardised
  so learns its target standardised too, (y - target_mean) / target_std, and answers in the
  target's own units: outputs * target_std + target_mean.
"""

from __future__ import annotations

import collections
import functools
import json
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.data.image import ImageError, decode_image

Channels = Literal[1, 3]


def class_names_problem(names) -> str | None:
    """Why `names` cannot name a classifier's classes (a list of at least two distinct names), or None."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "classes must be a list of names (strings)"
    if len(names) < 2:
        return f"classes gives {len(names)} name{'' if len(names) == 1 else 's'}: a classifier has at least two classes"
    empty = [str(i + 1) for i, name in enumerate(names) if not name.strip()]
    if empty:
        return f"classes has an empty name (number {', '.join(empty)}): a comma too many?"
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        return f"classes must differ; given more than once: {', '.join(map(repr, repeated[:5]))}"
    return None


class InputContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["image", "tabular"]
    classes: list[str] | None = None
    # images
    channels: Channels | None = None
    height: Annotated[int | None, Field(ge=1)] = None
    width: Annotated[int | None, Field(ge=1)] = None
    resize: Literal["bilinear"] = "bilinear"
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    # tabular
    features: Annotated[int | None, Field(ge=1)] = None
    columns: list[str] | None = None
    target_mean: float | None = None  # a regression target's, when it is learnt standardised
    target_std: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _complete(self) -> InputContract:
        if self.kind == "image":
            if self.channels is None or self.height is None or self.width is None:
                raise ValueError("an image contract needs channels, height and width")
            for name in ("mean", "std"):
                values = getattr(self, name)
                if values is not None and len(values) != self.channels:
                    raise ValueError(f"{name} has {len(values)} values for {self.channels} channel(s)")
        else:
            if self.features is None:
                raise ValueError("a tabular contract needs features")
            for name in ("mean", "std"):
                values = getattr(self, name)
                if values is not None and len(values) != self.features:
                    raise ValueError(f"{name} has {len(values)} values for {self.features} feature(s)")
        if (self.target_mean is None) != (self.target_std is None) or (self.target_scaled and self.images):
            raise ValueError("target_mean and target_std come together, for a model of numeric columns")
        return self

    @classmethod
    def image(cls, channels: int, height: int, width: int, classes=None) -> InputContract:
        return cls(
            kind="image", channels=channels, height=height, width=width, classes=list(classes) if classes else None
        )

    @classmethod
    def tabular(cls, features: int, classes=None, columns=None) -> InputContract:
        return cls(kind="tabular", features=features, classes=list(classes) if classes else None, columns=columns)

    @classmethod
    def from_meta(cls, meta: dict) -> InputContract:
        """The contract a checkpoint's metadata holds; checkpoints written before the contract
        existed (a `preprocess` dict: grey images, x / 255) read as the same contract."""
        if "input" in meta:
            return cls.model_validate(meta["input"])
        old, classes = meta["preprocess"], meta.get("classes")
        if old.get("kind") == "image":
            return cls.image(old["channels"], old["height"], old["width"], classes)
        return cls.tabular(old["features"], classes, old.get("columns"))

    def to_json(self) -> dict:
        """The contract as JSON, without what does not apply to its kind (a table is not resized)."""
        return self.model_dump(mode="json", exclude_none=True, exclude=None if self.images else {"resize"})

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @property
    def images(self) -> bool:
        return self.kind == "image"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.height, self.width) if self.images else (self.features,)

    @property
    def color(self) -> str | None:
        return None if not self.images else ("rgb" if self.channels == 3 else "grayscale")

    @property
    def normalised(self) -> bool:
        return self.mean is not None or self.std is not None

    def with_normalisation(self, mean, std) -> InputContract:
        return self.model_copy(update={"mean": [float(m) for m in mean], "std": [float(s) for s in std]})

    def with_target_scale(self, mean: float, std: float) -> InputContract:
        return self.model_copy(update={"target_mean": float(mean), "target_std": float(std)})

    @property
    def target_scaled(self) -> bool:
        return self.target_std is not None

    def to_target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets as the network learns them: standardised when the contract scales them."""
        return (y - self.target_mean) / self.target_std if self.target_scaled else y

    def from_target(self, outputs: torch.Tensor) -> torch.Tensor:
        """The network's outputs in the target's own units."""
        return outputs * self.target_std + self.target_mean if self.target_scaled else outputs

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel with float = pixel * scale + shift, as float32."""
        return _affine(tuple(self.mean or ()), tuple(self.std or ()), self.channels)

    def to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., C, H, W], or a tabular model's raw columns [..., features], to the
        float inputs the network sees (what was given unchanged)."""
        if not self.images:
            return self.standardise(pixels.float())
        x = pixels.float()
        if not self.normalised:
            return x.mul_(1 / 255)
        scale, shift = _affine_on(tuple(self.mean or ()), tuple(self.std or ()), self.channels, str(x.device))
        return x.mul_(scale).add_(shift)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Float columns [..., features] as the network sees them: (x - mean) / std when the
        contract carries them, else x itself."""
        if not self.normalised:
            return x
        mean, std = _columns_on(tuple(self.mean), tuple(self.std), str(x.device))
        return (x - mean) / std

    def decode(self, data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
        """One encoded image as the uint8 pixels [C, H, W] this contract takes."""
        if not self.images:
            raise ImageError(f"{name}: this model takes numeric inputs, not images")
        return decode_image(data, name, channels=self.channels, max_pixels=max_pixels, size=(self.width, self.height))


def _affine(mean: tuple, std: tuple, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean_ = np.asarray(mean or [0.0] * channels, dtype=np.float64)
    std_ = np.asarray(std or [1.0] * channels, dtype=np.float64)
    return (1 / (255 * std_)).astype(np.float32), (-mean_ / std_).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _columns_on(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(mean, dtype=torch.float32, device=device), torch.tensor(std, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=64)
def _affine_on(mean: tuple, std: tuple, channels: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine as [C, 1, 1] tensors on a device, made once: not a host-to-device copy per batch."""
    return tuple(torch.from_numpy(a).to(device).view(-1, 1, 1) for a in _affine(mean, std, channels))
