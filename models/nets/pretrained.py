"""Pretrained torchvision backbones with a new classification head, and their weights from disk.

The network is built without weights (as a predictor rebuilds it from a checkpoint); training
loads the backbone's weights from a file a person put on disk, never from a hidden download, and
never by unpickling code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from models.nets.state_dict import load_state


class MissingWeights(Exception):
    """The backbone's weights are not on disk (and may not be downloaded); the message says where to put them."""

    reason = "missing_weights"


class UnsafeWeights(Exception):
    """A weights file holds something other than plain tensors, or does not fit the backbone."""

    reason = "invalid_weights"


@functools.cache
def backbone_names() -> tuple[str, ...]:
    """Every classification model torchvision offers."""
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def close_backbones(name: str) -> list[str]:
    return difflib.get_close_matches(name, backbone_names(), n=5, cutoff=0.5)


def weights_enum(backbone: str):
    from torchvision.models import get_model_weights

    return get_model_weights(backbone)


def weights_names(backbone: str) -> list[str]:
    return [w.name for w in weights_enum(backbone)]


def resolve_weights(backbone: str, weights: str | None):
    """The torchvision weights entry a spec names (DEFAULT, a name, or Enum.NAME); None for random."""
    if weights is None:
        return None
    enum = weights_enum(backbone)
    name = weights.split(".", 1)[1] if weights.startswith(f"{enum.__name__}.") else weights
    return enum[name] if name != "DEFAULT" else enum.DEFAULT


def weights_file_name(backbone: str, weights: str | None) -> str | None:
    """The file name torchvision saves these weights under in $TORCH_HOME/hub/checkpoints."""
    entry = resolve_weights(backbone, weights)
    return None if entry is None else entry.url.rsplit("/", 1)[-1]


def transforms_of(backbone: str, weights: str | None) -> tuple[int, list[float], list[float]]:
    """(input side, mean, std) of the backbone's own preprocessing (its DEFAULT weights' when random)."""
    entry = resolve_weights(backbone, weights) or weights_enum(backbone).DEFAULT
    transforms = entry.transforms()
    return int(transforms.crop_size[0]), list(transforms.mean), list(transforms.std)


def _architecture(backbone: str, weights: str | None, size: int) -> nn.Module:
    """torchvision's network as those weights were trained, with random values (no download)."""
    from torchvision.models import get_model

    entry = resolve_weights(backbone, weights)
    kwargs: dict = {}
    if backbone in ("googlenet", "inception_v3"):
        # As torchvision builds them for pretrained weights: no auxiliary heads, and inputs
        # normalised with ImageNet's statistics converted to what Google's weights expect.
        kwargs.update(aux_logits=False, init_weights=False, transform_input=entry is not None)
    if backbone.startswith("vit_"):  # position embeddings for one image size: the weights', or the inputs'
        kwargs["image_size"] = entry.meta["min_size"][0] if entry is not None else size
    if entry is not None:
        kwargs["num_classes"] = len(entry.meta["categories"])
    return get_model(backbone, weights=None, **kwargs)


def _classifier(net: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of the network's last layer that produces class scores."""
    found = None
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            found = (name, module)
    if found is None:
        raise ValueError("no classification layer found")
    return found


def _replace(net: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)


class Pretrained(nn.Module):
    """A torchvision backbone whose classification layer became `head`, sized for the dataset.

    Inputs are resized to the side the backbone was trained on (or the spec's resize), and grey
    images are repeated to three channels. `frozen` keeps the backbone's weights fixed and its
    batch-norm statistics too: the backbone stays in eval mode while the head trains.
    """

    def __init__(self, backbone: str, weights: str | None, outputs: int, size: int):
        super().__init__()
        self.size = size
        self.backbone = _architecture(backbone, weights, size)
        self.head_name, old = _classifier(self.backbone)
        _replace(self.backbone, self.head_name, nn.Identity())
        width = old.in_features if isinstance(old, nn.Linear) else old.in_channels
        self.head = nn.Linear(width, outputs)
        self.frozen = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone makes of a float batch [N, C, H, W]: the head's inputs."""
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def freeze(self, frozen: bool) -> None:
        self.frozen = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Pretrained:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def extra_repr(self) -> str:
        return f"size={self.size}, frozen={self.frozen}"


def find_pretrained(model: nn.Module) -> Pretrained | None:
    return next((m for m in model.modules() if isinstance(m, Pretrained)), None)


def weights_dirs(weights_dir: Path | None) -> list[Path]:
    """Where weights files are looked for: TRAINYARD_WEIGHTS_DIR, then torchvision's own folder."""
    dirs = [Path(weights_dir)] if weights_dir is not None else []
    return dirs + [Path(torch.hub.get_dir()) / "checkpoints"]


def available_weights(weights_dir: Path | None) -> list[str]:
    """The weights files on disk that some backbone's weights are saved under."""
    names = set()
    for folder in weights_dirs(weights_dir):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())
    return sorted(names)


def find_weights_file(backbone: str, weights: str | None, weights_dir: Path | None) -> Path | None:
    name = weights_file_name(backbone, weights)
    return next((d / name for d in weights_dirs(weights_dir) if (d / name).is_file()), None)


def missing_weights_message(backbone: str, weights: str | None, weights_dir: Path | None) -> str:
    entry = resolve_weights(backbone, weights)
    name = weights_file_name(backbone, weights)
    places = weights_dirs(weights_dir)
    return (
        f"the weights {type(entry).__name__}.{entry.name} of {backbone} are not on disk: put the file {name} "
        f"({entry.url}) at {places[0] / name}"
        + (f" or {places[1] / name}" if len(places) > 1 else "")
        + ", or set TRAINYARD_ALLOW_DOWNLOAD=true on the worker to download it; without pretrained weights, "
        + '"weights": null trains the whole network from scratch (with "freeze": "none")'
    )


def locate_weights(backbone: str, weights: str | None, *, weights_dir: Path | None, allow_download: bool) -> Path:
    """The file holding these weights: found on disk, or downloaded when that is allowed."""
    path = find_weights_file(backbone, weights, weights_dir)
    if path is not None:
        return path
    if not allow_download:
        raise MissingWeights(missing_weights_message(backbone, weights, weights_dir))
    entry = resolve_weights(backbone, weights)
    target = weights_dirs(None)[0] / weights_file_name(backbone, weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = torch.hub.HASH_REGEX.search(target.name)  # torchvision's names carry their hash's prefix
    try:
        torch.hub.download_url_to_file(
            entry.url, str(target), hash_prefix=digest.group(1) if digest else None, progress=False
        )
    except Exception as exc:  # no network, a proxy, a partial file: say where the file goes instead
        raise MissingWeights(
            f"downloading {entry.url} failed ({type(exc).__name__}: {exc}); "
            + missing_weights_message(backbone, weights, weights_dir)
        ) from None
    return target


def _first_line(error: Exception) -> str:
    """An error's first line, without a terminal's colour codes, for a job's record."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors, refusing anything that would run code when unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses a global (code would run) or what is no pickle
        said = str(exc)
        if re.search(r"unsupported global|is blocked", said, re.IGNORECASE):  # it would call a global: run code
            raise UnsafeWeights(
                f"{path} was refused: it is not a file of plain tensors (loading it would run code it holds); "
                "save the network's state_dict() (torch.save(model.state_dict(), ...)) and use that file"
            ) from None
        why = re.search(r"WeightsUnpickler error:\s*(.+)", said)
        raise UnsafeWeights(
            f"{path} is not a weights file torch can read ({why[1] if why else _first_line(exc)})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeWeights(f"{path} does not hold a state dict of tensors")
    return state


# DenseNet's published weights name layers 'norm.1' where the module is 'norm1' (torchvision fixes
# them the same way when it loads them).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def load_backbone(model: Pretrained, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision state dict into the backbone; its classification layer is left out."""
    versions = getattr(state, "_metadata", None)  # module versions the file was saved with
    state = {_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    head = f"{model.head_name}."
    backbone_state = OrderedDict(
        (k, v)
        for k, v in state.items()
        if not k.startswith(head) and not k.startswith("AuxLogits.") and not k.startswith("aux")
    )
    if versions is not None:
        backbone_state._metadata = versions
    try:
        missing, unexpected = load_state(model.backbone, backbone_state, strict=False)
    except RuntimeError as exc:
        raise UnsafeWeights(f"{source} does not fit the backbone: {str(exc).strip().splitlines()[-1][:300]}") from None
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise UnsafeWeights(f"{source} does not fit the backbone: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_pretrained_weights(model: nn.Module, spec, *, weights_dir: Path | None, allow_download: bool) -> Path | None:
    """Load the spec's backbone weights into a freshly built model; returns the file used."""
    pretrained = find_pretrained(model)
    if pretrained is None or spec.weights is None:
        return None
    path = locate_weights(spec.backbone, spec.weights, weights_dir=weights_dir, allow_download=allow_download)
    load_backbone(pretrained, read_weights(path), str(path))
    return path
