"""The job spec: what to train, on what data, with which optimizer, for how long.

Every field is validated and unknown keys are rejected, so a typo in a spec is a clear error
instead of a silently ignored option. Problems that depend on the dataset (a model that does
not fit its inputs) are found by spec_problems (spec/problems.py), which needs to know the
dataset's shape.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.spec.explain import JOB_ID_PATTERN, worded


class StrictModel(BaseModel):
    # strict: a number is a JSON number, not true, false or "1" (a tuple field, which takes a JSON
    # array, says Field(strict=False) to take a list; its items stay strict). Python's JSON decoder
    # takes NaN and Infinity, which no spec means and no JSON answer can echo.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Init = Literal["default", "normal", "xavier"]
Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu", "gelu"]
Probability = Annotated[float, Field(ge=0, lt=1)]
Width = Annotated[int, Field(ge=1, le=65536)]
Kernel = Annotated[int, Field(ge=1, le=64)]


class _ArchBase(StrictModel):
    init: Init = "default"
    init_std: Annotated[float, Field(gt=0, le=10)] = 0.01


class LinearRegressionSpec(_ArchBase):
    arch: Literal["linear_regression"]


class PolynomialSpec(_ArchBase):
    """Linear regression on the features x^i / i! (i = 1..degree) of a one-dimensional input."""

    arch: Literal["polynomial"]
    degree: Annotated[int, Field(ge=1, le=30)] = 3


class SoftmaxRegressionSpec(_ArchBase):
    arch: Literal["softmax_regression"]


Dropouts = Annotated[list[Probability], Field(max_length=32)]


class MLPSpec(_ArchBase):
    arch: Literal["mlp"]
    hidden: Annotated[list[Width], Field(min_length=1, max_length=32)] = [256]
    activation: Activation = "relu"
    dropout: Dropouts = []

    @field_validator("dropout", mode="before", json_schema_input_type=Dropouts | Probability)
    @classmethod
    def _scalar_dropout(cls, value: object) -> object:
        """Accept one probability for all hidden layers."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        return value

    @model_validator(mode="after")
    def _dropout_per_hidden_layer(self) -> MLPSpec:
        if len(self.dropout) == 1 and len(self.hidden) > 1:
            self.dropout = self.dropout * len(self.hidden)
        if self.dropout and len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"dropout has {len(self.dropout)} entries but hidden has {len(self.hidden)} "
                f"layer{'' if len(self.hidden) == 1 else 's'}; "
                "give one probability per hidden layer or a single one for all"
            )
        return self


class LeNetSpec(_ArchBase):
    arch: Literal["lenet"]
    activation: Literal["sigmoid", "relu"] = "sigmoid"
    pool: Literal["avg", "max"] = "avg"


class ResNet18Spec(_ArchBase):
    """torchvision's ResNet-18, its first convolution taking the dataset's channels."""

    arch: Literal["resnet18"]


# Layers of a `sequential` network; input sizes are inferred, never written.
class FlattenLayer(StrictModel):
    type: Literal["flatten"]


class LinearLayer(StrictModel):
    type: Literal["linear"]
    out_features: Width


class Conv2dLayer(StrictModel):
    type: Literal["conv2d"]
    out_channels: Width
    kernel_size: Kernel
    stride: Kernel = 1
    padding: Annotated[int, Field(ge=0, le=64)] = 0


class PoolLayer(StrictModel):
    type: Literal["maxpool2d", "avgpool2d"]
    kernel_size: Kernel
    stride: Kernel | None = None
    padding: Annotated[int, Field(ge=0, le=32)] = 0


class BatchNormLayer(StrictModel):
    type: Literal["batchnorm"]


class DropoutLayer(StrictModel):
    type: Literal["dropout"]
    p: Probability = 0.5


class ActivationLayer(StrictModel):
    type: Activation


Layer = Annotated[
    Union[FlattenLayer, LinearLayer, Conv2dLayer, PoolLayer, BatchNormLayer, DropoutLayer, ActivationLayer],
    Field(discriminator="type"),
]


class SequentialSpec(_ArchBase):
    arch: Literal["sequential"]
    layers: Annotated[list[Layer], Field(min_length=1, max_length=128)]


class PretrainedSpec(StrictModel):
    """A torchvision classification model, its weights read from disk and its head replaced."""

    arch: Literal["pretrained"]
    backbone: Annotated[
        str,
        Field(
            max_length=64,
            description="a classification model of torchvision, e.g. resnet18, mobilenet_v3_small, efficientnet_b0",
        ),
    ]
    weights: Annotated[
        str | None,
        Field(
            max_length=100, description="DEFAULT, a torchvision weights name (IMAGENET1K_V1, ...) or null for random"
        ),
    ] = "DEFAULT"
    freeze: Literal["none", "backbone"] = "none"
    head_lr_mult: Annotated[
        float, Field(gt=0, le=1000, description="the head's learning rate as a multiple of the backbone's")
    ] = 1.0
    unfreeze_at_epoch: Annotated[
        int | None, Field(ge=2, le=10_000, description="with freeze=backbone: train everything from this epoch on")
    ] = None

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from models.nets.pretrained import backbone_names, close_backbones

        if value not in backbone_names():
            close = close_backbones(value)
            hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
            raise ValueError(f"unknown backbone {value!r}: {hint}")
        return value

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        from models.nets.pretrained import resolve_weights, weights_names

        backbone = info.data.get("backbone")
        if backbone is None:
            return value  # the backbone's own error says why
        try:
            resolve_weights(backbone, value)
        except KeyError:
            raise ValueError(
                f"{backbone} has no weights {value!r}; choose DEFAULT, {', '.join(weights_names(backbone))} or null"
            ) from None
        return value

    @field_validator("unfreeze_at_epoch")
    @classmethod
    def _unfreeze_needs_freeze(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("freeze") != "backbone":
            raise ValueError("unfreeze_at_epoch needs freeze: backbone")
        return value


ModelSpec = Annotated[
    Union[
        LinearRegressionSpec,
        PolynomialSpec,
        SoftmaxRegressionSpec,
        MLPSpec,
        LeNetSpec,
        ResNet18Spec,
        SequentialSpec,
        PretrainedSpec,
    ],
    Field(discriminator="arch"),
]
MODEL_SPEC = TypeAdapter(ModelSpec)  # validates the `model` part of a spec on its own

REGRESSION_ONLY = frozenset({"linear_regression", "polynomial"})
CLASSIFICATION_ONLY = frozenset({"softmax_regression", "lenet", "resnet18", "pretrained"})
IMAGE_ONLY = frozenset({"lenet", "resnet18", "pretrained"})


class _DataBase(StrictModel):
    val_fraction: Probability = 0.0


class NormalizeSpec(StrictModel):
    """Explicit per-channel mean and standard deviation of pixel / 255."""

    mean: Annotated[list[Annotated[float, Field(ge=-10, le=10)]], Field(min_length=1, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1, max_length=3)]

    @model_validator(mode="after")
    def _one_pair_per_channel(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel")
        return self


def _normalize_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "named"
    if isinstance(value, dict | NormalizeSpec):
        return "explicit"
    return None


# One branch by the value's form, so a wrong name or an incomplete {mean, std} is one error, not one
# per branch.
Normalize = Annotated[
    Union[Annotated[Literal["none", "dataset"], Tag("named")], Annotated[NormalizeSpec, Tag("explicit")]],
    Discriminator(
        _normalize_form,
        custom_error_type="normalize",
        custom_error_message="normalize must be 'none', 'dataset' or {\"mean\": [...], \"std\": [...]}",
    ),
]


def _ordered_pair(low: float, high: float, what: str) -> None:
    if low > high:
        raise ValueError(f"{what} must be [low, high] with low <= high")


class RandomCropSpec(StrictModel):
    """Pad by `padding` (zeros), then crop `size` (default: the image's own side) at a random place;
    a crop smaller than the image is resized back to it, so every split keeps one shape."""

    padding: Annotated[int, Field(ge=0, le=64)] = 4
    size: Annotated[int | None, Field(ge=4, le=512)] = None


class RandomResizedCropSpec(StrictModel):
    """A random area share `scale` and aspect `ratio` of the image, resized back to its size."""

    scale: Annotated[
        tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]], Field(strict=False)
    ] = (0.08, 1.0)
    ratio: Annotated[
        tuple[Annotated[float, Field(gt=0, le=10)], Annotated[float, Field(gt=0, le=10)]], Field(strict=False)
    ] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ordered(self) -> RandomResizedCropSpec:
        _ordered_pair(*self.scale, "scale")
        _ordered_pair(*self.ratio, "ratio")
        return self


class ColorJitterSpec(StrictModel):
    brightness: Annotated[float, Field(ge=0, le=10)] = 0.0
    contrast: Annotated[float, Field(ge=0, le=10)] = 0.0
    saturation: Annotated[float, Field(ge=0, le=10)] = 0.0
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class AugmentSpec(StrictModel):
    """Random changes to training images only (never validation, test or predict), seeded by the job."""

    random_crop: RandomCropSpec | None = None
    random_resized_crop: RandomResizedCropSpec | None = None
    horizontal_flip: bool | Annotated[float, Field(ge=0, le=1)] = Field(
        default=False, description="true (probability 0.5) or a probability"
    )
    color_jitter: ColorJitterSpec | None = None
    trivial_augment: bool = False

    @model_validator(mode="after")
    def _one_crop(self) -> AugmentSpec:
        if self.random_crop is not None and self.random_resized_crop is not None:
            raise ValueError("choose one of random_crop and random_resized_crop")
        return self

    @property
    def flip_probability(self) -> float:
        if isinstance(self.horizontal_flip, bool):
            return 0.5 if self.horizontal_flip else 0.0
        return float(self.horizontal_flip)


class _ImageOptions(_DataBase):
    limit_train: Annotated[int | None, Field(ge=1)] = None
    limit_test: Annotated[int | None, Field(ge=1)] = None
    resize: Annotated[int | None, Field(ge=8, le=512, description="side of the square the images are resized to")] = (
        None
    )
    normalize: Normalize | None = Field(
        default=None,
        description="none: pixel / 255; dataset: per-channel mean/std of the training split (a CSV: "
        "each column, and a regression's target, standardised by its mean/std); or explicit {mean, std}; "
        "unset: the backbone's own for a pretrained model, else none",
    )
    augment: AugmentSpec | None = None


class ImageDatasetSpec(_ImageOptions):
    dataset: Literal["fashion-mnist", "mnist", "cifar10"]


UPLOADED_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# What may follow `uploaded:` (an uploaded dataset's id or name): 1 to 200 characters, no / or \,
# no space at either end.
UPLOADED_NAME = r"[^\s/\\]([^/\\]{0,198}[^\s/\\])?"


class UploadedDatasetSpec(_ImageOptions):
    """`uploaded:<id>`; a unique prefix of the id or the dataset's name is taken at submission,
    which stores the id in the job's spec."""

    dataset: Annotated[
        str,
        Field(
            pattern=worded(
                rf"^uploaded:{UPLOADED_NAME}$",
                "uploaded: and an uploaded dataset's id, a unique prefix of it or its name (1 to 200 characters, "
                "no / or \\, no space at either end)",
            ),
            description="uploaded:<dataset id, a unique prefix of it, or its name>",
        ),
    ]

    @property
    def dataset_id(self) -> str:
        """What follows `uploaded:`: an id once submitted (a prefix or a name before)."""
        return self.dataset.removeprefix("uploaded:")


class SyntheticLinearSpec(_DataBase):
    dataset: Literal["synthetic-linear"]
    num_examples: Annotated[int, Field(ge=2, le=10_000_000)] = 1000
    num_test: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    true_w: Annotated[list[float], Field(min_length=1, max_length=4096)] = [2.0, -3.4]
    true_b: float = 4.2
    noise: Annotated[float, Field(ge=0)] = 0.01


class SyntheticPolynomialSpec(_DataBase):
    """y = sum_i coefficients[i] * x^i / i! + noise, x ~ N(0, 1), as in the polynomial-fitting chapter."""

    dataset: Literal["synthetic-polynomial"]
    n_train: Annotated[int, Field(ge=2, le=1_000_000)] = 100
    n_test: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    coefficients: Annotated[list[float], Field(min_length=1, max_length=31)] = [5.0, 1.2, -3.4, 5.6]
    noise: Annotated[float, Field(ge=0)] = 0.1


def _dataset_tag(value: Any) -> str | None:
    name = value.get("dataset") if isinstance(value, dict) else getattr(value, "dataset", None)
    if isinstance(name, str) and name.startswith("uploaded:"):
        return "uploaded"
    return name


DataSpec = Annotated[
    Union[
        Annotated[ImageDatasetSpec, Tag("fashion-mnist")],
        Annotated[ImageDatasetSpec, Tag("mnist")],
        Annotated[ImageDatasetSpec, Tag("cifar10")],
        Annotated[SyntheticLinearSpec, Tag("synthetic-linear")],
        Annotated[SyntheticPolynomialSpec, Tag("synthetic-polynomial")],
        Annotated[UploadedDatasetSpec, Tag("uploaded")],
    ],
    Discriminator(
        _dataset_tag,
        custom_error_type="dataset",
        custom_error_message="dataset must be fashion-mnist, mnist, cifar10, synthetic-linear, "
        "synthetic-polynomial or uploaded:<dataset id or name>",
    ),
]


class OptimizerSpec(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=100)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    nesterov: bool = False
    betas: Annotated[tuple[Probability, Probability], Field(strict=False)] = (0.9, 0.999)
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0
    decay_bias: bool = Field(default=False, description="apply weight_decay and l1 to biases and norms too")
    l1: Annotated[float, Field(ge=0, le=10)] = 0.0

    @model_validator(mode="after")
    def _options_of_the_optimizer(self) -> OptimizerSpec:
        if self.name != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum and nesterov are options of sgd, not {self.name}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        return self


class ScheduleSpec(StrictModel):
    name: Literal["none", "step", "cosine"] = "none"
    step_size: Annotated[int, Field(ge=1, le=10_000)] = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 0.0


MetricName = Literal["val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "train_acc"]


class EarlyStoppingSpec(StrictModel):
    metric: MetricName = "val_loss"
    mode: Literal["min", "max"] | None = Field(default=None, description="default: max for accuracy, min for loss")
    patience: Annotated[int, Field(ge=1, le=10_000)] = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0

    @property
    def direction(self) -> str:
        return self.mode or ("max" if self.metric.endswith("_acc") else "min")


class CheckpointsSpec(StrictModel):
    keep: Annotated[
        Literal["best_and_last", "all"] | Annotated[int, Field(ge=1, le=10_000)],
        Field(
            description="which epochs' checkpoints a job keeps as it trains: the best (what job:<id> "
            "serves) and the last, all of them, or the last N"
        ),
    ] = "best_and_last"


class CrossValidationSpec(StrictModel):
    folds: Annotated[int, Field(ge=2, le=20)]


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class InitFromSpec(StrictModel):
    """Start from the weights of another job's checkpoint, or of a registered model version
    (`name`, `name:VERSION`, `name@ALIAS`; an imported one too), instead of a fresh initialisation."""

    job_id: Annotated[
        str | None, Field(pattern=JOB_ID_PATTERN, description="the job's id or a unique prefix of it")
    ] = None
    checkpoint: Literal["best", "last"] | Annotated[int, Field(ge=1, le=10_000)] = "last"
    model: Annotated[str | None, Field(max_length=200, description="a registered model version")] = None

    @model_validator(mode="after")
    def _one_source(self) -> InitFromSpec:
        if (self.job_id is None) == (self.model is None):
            raise ValueError("give either job_id (with checkpoint) or model")
        return self


class DistributedSpec(StrictModel):
    """Train one job on several processes at once (DistributedDataParallel, launched by torchrun):
    one process per GPU on CUDA, or several CPU processes; the job's batch_size stays the global batch."""

    nproc_per_node: Annotated[
        int, Field(ge=1, le=64, description="processes on each machine; on CUDA, one per GPU it uses")
    ]
    nnodes: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="machines (workers) the job trains on at once, meeting at a rendezvous; more "
            "than one needs an object store (TRAINYARD_STORAGE_URL)",
        ),
    ] = 1

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class JobSpec(StrictModel):
    name: Annotated[str | None, Field(max_length=200)] = None
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    early_stopping: EarlyStoppingSpec | None = None
    max_runtime_seconds: Annotated[float | None, Field(gt=0, le=30 * 86400)] = None
    cross_validation: CrossValidationSpec | None = None
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    device: str = "auto"
    amp: Literal["off", "bf16", "fp16"] = Field(default="off", description="mixed precision; fp16 needs CUDA")
    compile: bool = Field(default=False, description="torch.compile the model for training")
    init_from: InitFromSpec | None = None
    checkpoints: CheckpointsSpec = CheckpointsSpec()
    distributed: DistributedSpec | None = Field(
        default=None, description="train on several processes (DistributedDataParallel); absent: one process"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("distributed")
    @classmethod
    def _fits_the_batch(cls, value: DistributedSpec | None, info: ValidationInfo) -> DistributedSpec | None:
        if value is None:
            return value
        batch_size, world = info.data.get("batch_size"), value.world_size
        if batch_size is not None and batch_size % world:
            raise ValueError(
                f"batch_size {batch_size} is the global batch, shared by nproc_per_node x nnodes = {world} "
                f"processes: make batch_size a multiple of {world}, or change "
                + ("nproc_per_node or nnodes" if value.nnodes > 1 else "nproc_per_node")
            )
        if info.data.get("compile"):
            raise ValueError("compile is not supported with distributed yet; set compile false")
        device = info.data.get("device")
        if device is not None and device.startswith("cuda:") and world > 1:
            raise ValueError(
                f"device {device!r} names one GPU, and each process of a distributed job takes a GPU "
                "of its own: use device 'cuda' or 'auto'"
            )
        return value

    @property
    def processes(self) -> int:
        """The processes the job trains on (on each machine)."""
        return self.distributed.nproc_per_node if self.distributed else 1

    @property
    def resize(self) -> int | None:
        """The side images are resized to inside the network: the spec's, or a pretrained backbone's own."""
        size = getattr(self.data, "resize", None)
        if size is None and self.model.arch == "pretrained":
            from models.nets.pretrained import transforms_of

            size = transforms_of(self.model.backbone, self.model.weights)[0]
        return size

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: equal specs, equal digests. (A spec without
        `distributed` digests as it did before the field existed.)"""
        exclude = {"distributed"} if self.distributed is None else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()
