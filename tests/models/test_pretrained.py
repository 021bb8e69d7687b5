"""Pretrained backbones: weights from disk only, frozen means frozen, a new head, grey on RGB.

The "pretrained" weights are made here: a ResNet-18 trained from random weights on the fixture's
own images, saved as torchvision saves its download (resnet18-f37072fd.pth) in a temporary
TORCH_HOME. No test opens a network connection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import read_checkpoint, write_checkpoint
from models.data.idx import image_dataset
from models.inference.predictor import Predictor
from models.nets.pretrained import MissingWeights, UnsafeWeights, find_pretrained
from models.spec.job import JobSpec
from models.training.engine import Callbacks, fit, prepare
from tests.support.datagen import class_images, colour_images

pytestmark = pytest.mark.slow  # trains and fine-tunes backbones for seconds a test

CLASSES = tuple("abcdefghij")
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision's name for ResNet18_Weights.IMAGENET1K_V1


def _dataset(images, seed: int = 0, n_train: int = 400, n_test: int = 200):
    rng = np.random.default_rng(seed)
    y_train = rng.integers(0, 10, n_train).astype(np.uint8)
    y_test = rng.integers(0, 10, n_test).astype(np.uint8)
    return image_dataset(
        {
            "train_images": images(y_train, rng),
            "train_labels": y_train,
            "test_images": images(y_test, rng),
            "test_labels": y_test,
        },
        name="fixture",
        classes=CLASSES,
    )


def _spec(model: dict, *, epochs: int = 2, lr: float = 1e-2, batch_size: int = 64, **data) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "pretrained", "backbone": "resnet18", **model},
            "data": {"dataset": "cifar10", "resize": 32, **data},
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": {"name": "adam", "lr": lr},
        }
    )


@pytest.fixture(scope="module")
def colour():
    return _dataset(colour_images)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, colour):
    """A ResNet-18 state dict that has learned the fixture's colours, saved as torchvision would."""
    spec = _spec({"weights": None}, epochs=3, lr=1e-3)
    model = fit(spec, dataset=colour, data_dir=tmp_path_factory.mktemp("unused")).run.model
    state = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # ImageNet's head
    path = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints" / WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


@pytest.fixture
def torch_home(weights_file, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(weights_file.parents[2]))
    return weights_file


def _backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in find_pretrained(model).backbone.state_dict().items()}


def test_a_frozen_pretrained_backbone_beats_a_frozen_random_one_by_far(torch_home, colour, tmp_path):
    pretrained = fit(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path)
    random = fit(_spec({"freeze": "backbone", "weights": None}), dataset=colour, data_dir=tmp_path)
    assert pretrained.run.history[-1].test_acc >= random.run.history[-1].test_acc + 0.4
    assert pretrained.run.history[-1].test_acc >= 0.8


def test_frozen_means_bit_identical_parameters_and_batch_norm_statistics(torch_home, colour, tmp_path):
    saved = torch.load(torch_home, weights_only=True)
    run = fit(_spec({"freeze": "backbone"}, epochs=2), dataset=colour, data_dir=tmp_path).run
    after = find_pretrained(run.model).backbone.state_dict()
    compared = [k for k in after if k in saved]
    assert "bn1.running_mean" in compared and "layer4.1.bn2.num_batches_tracked" in compared
    for key in compared:
        assert torch.equal(after[key], saved[key]), key
    assert run.model.head.out_features == len(CLASSES)
    assert not torch.equal(run.model.head.weight, torch.zeros_like(run.model.head.weight))


def test_the_frozen_backbone_is_bit_identical_through_the_full_path_too(torch_home, colour, tmp_path):
    """With augmentation the backbone runs every batch (no feature cache): still nothing changes."""
    spec = _spec({"freeze": "backbone"}, epochs=1, augment={"horizontal_flip": True})
    run = prepare(spec, dataset=colour, data_dir=tmp_path)
    before = _backbone_state(run.model)
    run = fit(spec, dataset=colour, data_dir=tmp_path).run
    for key, value in find_pretrained(run.model).backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unfreeze_at_epoch_trains_the_head_first_then_everything(torch_home, colour, tmp_path, caplog):
    spec = _spec({"freeze": "backbone", "unfreeze_at_epoch": 2, "head_lr_mult": 10}, epochs=2, lr=1e-4)
    caplog.set_level("INFO", logger="models")

    class Snapshots(Callbacks):
        states = []

        def on_start(self, run):
            self.states.append(_backbone_state(run.model))

        def on_epoch_end(self, run, metrics):
            self.states.append(_backbone_state(run.model))

        def on_fold_end(self, run, fold):
            pass

        def should_stop(self):
            return False

    snapshots = Snapshots()
    run = fit(spec, snapshots, dataset=colour, data_dir=tmp_path).run
    start, epoch1, epoch2 = snapshots.states
    assert all(torch.equal(start[k], epoch1[k]) for k in start)
    assert not all(torch.equal(epoch1[k], epoch2[k]) for k in start)
    lrs = sorted({group["lr"] for group in run.optimizer.param_groups})
    assert lrs == pytest.approx([1e-4, 1e-3])
    said = [r.getMessage() for r in caplog.records if "unfrozen" in r.getMessage()]
    assert said == ["epoch 2: the backbone is unfrozen (unfreeze_at_epoch): the whole network trains from here"]


def test_grey_images_train_on_an_rgb_backbone(torch_home, tmp_path):
    grey = _dataset(lambda labels, rng: class_images(labels, rng, size=28)[:, None], n_train=300)
    run = fit(_spec({"freeze": "none"}, epochs=2, lr=1e-3), dataset=grey, data_dir=tmp_path).run
    assert run.dataset.contract.channels == 1
    assert run.dataset.contract.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert run.history[-1].test_acc > 0.5


def test_the_backbone_transforms_become_the_input_contract_unless_the_spec_says(torch_home, colour, tmp_path):
    run = prepare(_spec({"freeze": "backbone"}, resize=None), dataset=colour, data_dir=tmp_path)
    assert run.dataset.contract.mean == pytest.approx([0.485, 0.456, 0.406])
    assert run.dataset.contract.std == pytest.approx([0.229, 0.224, 0.225])
    assert find_pretrained(run.model).size == 224
    explicit = prepare(_spec({"freeze": "backbone"}, normalize="none"), dataset=colour, data_dir=tmp_path)
    assert not explicit.dataset.contract.normalised
    assert find_pretrained(explicit.model).size == 32


def test_a_checkpoint_predicts_as_the_trained_model_does(torch_home, colour, tmp_path):
    run = fit(_spec({"freeze": "backbone"}, epochs=1), dataset=colour, data_dir=tmp_path).run
    path = tmp_path / "epoch-0001.safetensors"
    write_checkpoint(path, run.model.state_dict(), run.model_meta())
    predictor = Predictor.from_checkpoint(path)
    pixels = colour.x_test[:16]
    expected = torch.softmax(run.model.eval()(run.dataset.to_float(pixels)), dim=1)
    assert torch.allclose(predictor.probabilities(pixels), expected, atol=1e-5)
    assert set(read_checkpoint(path)[0]) >= {"head.weight", "backbone.conv1.weight"}


def test_missing_weights_name_the_exact_file_and_open_no_connection(tmp_path, monkeypatch, colour, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeights) as caught:
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, weights_dir=tmp_path / "weights")
    message = str(caught.value)
    assert str(tmp_path / "weights" / WEIGHTS_FILE) in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / WEIGHTS_FILE) in message
    assert "TRAINYARD_ALLOW_DOWNLOAD" in message and message.endswith(
        '"weights": null trains the whole network from scratch (with "freeze": "none")'
    )
    assert caught.value.reason == "missing_weights"
    assert no_network == []


def test_a_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch, colour, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeights) as caught:
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, allow_download=True)
    assert "downloading https://download.pytorch.org/models/resnet18-f37072fd.pth failed" in str(caught.value)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / WEIGHTS_FILE) in str(caught.value)
    assert no_network  # it did try, since it was allowed to


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _RunsAShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path, colour):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, weights / WEIGHTS_FILE)
    with pytest.raises(UnsafeWeights, match=r"not a file of plain tensors \(loading it would run code") as refused:
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, weights_dir=weights)
    assert not marker.exists() and "\x1b" not in str(refused.value)  # no terminal codes in the job's record
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsAShell(marker)}, weights / WEIGHTS_FILE)
    with pytest.raises(UnsafeWeights, match=r"not a file of plain tensors \(loading it would run code"):
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, weights_dir=weights)
    assert not marker.exists()
    (weights / WEIGHTS_FILE).write_text("not weights at all\n")
    with pytest.raises(UnsafeWeights, match="is not a weights file torch can read"):
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, weights_dir=weights)


def test_weights_of_another_network_are_refused_clearly(tmp_path, colour):
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, weights / WEIGHTS_FILE)
    with pytest.raises(UnsafeWeights, match="does not fit the backbone"):
        prepare(_spec({"freeze": "backbone"}), dataset=colour, data_dir=tmp_path, weights_dir=weights)


def test_a_plain_torchvision_state_dict_can_be_the_starting_point(weights_file, colour, tmp_path):
    """init_from an imported torchvision network: its backbone is loaded, the head is new."""
    state = torch.load(weights_file, weights_only=True)
    run = prepare(
        _spec({"freeze": "backbone", "weights": None}), dataset=colour, data_dir=tmp_path, initial_weights=state
    )
    loaded = find_pretrained(run.model).backbone.state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_a_stop_while_features_are_computed_is_honoured_and_the_resumed_job_ends_alike(torch_home, colour, tmp_path):
    from tests.models.common import StopAt

    spec = _spec({"freeze": "backbone"}, epochs=2, batch_size=32)
    whole = fit(spec, dataset=colour, data_dir=tmp_path)
    stopped = fit(spec, StopAt(2), dataset=colour, data_dir=tmp_path)
    assert stopped.reason == "stopped" and stopped.stopped_at.epoch == 1 and stopped.run.history == []
    resumed = fit(spec, dataset=colour, data_dir=tmp_path, resume=stopped.run.state(stopped.stopped_at))
    assert [m.test_acc for m in resumed.run.history] == [m.test_acc for m in whole.run.history]


@pytest.mark.parametrize(
    "backbone",
    [
        "mnasnet0_5",
        "densenet121",
        "googlenet",
        "squeezenet1_1",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "regnet_x_400mf",
        "shufflenet_v2_x0_5",
    ],
)
def test_torchvision_state_dicts_load_into_the_backbone_and_checkpoints_round_trip(backbone, colour, tmp_path):
    """Each family's own state-dict quirks: MNASNet's versions, DenseNet's key names, GoogLeNet's
    auxiliary heads, SqueezeNet's convolutional classifier, RegNet's widths computed with tensors."""
    import torchvision

    from models.nets.pretrained import weights_file_name

    torch.manual_seed(0)
    state = torchvision.models.get_model(backbone, weights=None).state_dict()
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(state, weights / weights_file_name(backbone, "DEFAULT"))
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "pretrained", "backbone": backbone, "freeze": "backbone"},
            "data": {"dataset": "cifar10", "resize": 64},
            "epochs": 1,
            "batch_size": 2,
        }
    )
    run = prepare(spec, dataset=colour, data_dir=tmp_path, weights_dir=weights)
    loaded = find_pretrained(run.model).backbone.state_dict()
    shared = [k for k in loaded if k in state]
    assert len(shared) >= len(loaded) - 2  # all but the replaced classifier
    assert all(torch.equal(loaded[k], state[k]) for k in shared)
    path = tmp_path / "epoch-0001.safetensors"
    write_checkpoint(path, run.model.state_dict(), run.model_meta())
    pixels = colour.x_test[:2]
    expected = torch.softmax(run.model.eval()(run.dataset.to_float(pixels)), dim=1)
    assert torch.allclose(Predictor.from_checkpoint(path).probabilities(pixels), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "weights"),
    [("regnet_y_400mf", "DEFAULT"), ("vit_b_16", None), ("swin_t", "DEFAULT"), ("inception_v3", "DEFAULT")],
)
def test_every_family_is_checked_and_estimated_at_submit_without_memory(backbone, weights):
    from models.nets.cost import estimate
    from models.spec.problems import builtin_dataset_info, spec_problems

    spec = JobSpec.model_validate(
        {
            "model": {"arch": "pretrained", "backbone": backbone, "weights": weights},
            "data": {"dataset": "cifar10"},
            "batch_size": 1,
        }
    )
    assert spec_problems(spec, builtin_dataset_info(spec.data)) == []
    assert estimate(spec, (3, 32, 32), 10).parameters > 1_000_000


def test_a_fine_tuned_model_of_other_classes_starts_from_its_backbone(torch_home, colour, tmp_path):
    first = fit(_spec({"freeze": "backbone"}, epochs=1), dataset=colour, data_dir=tmp_path).run.model.state_dict()
    five = {**first, "head.weight": first["head.weight"][:5], "head.bias": first["head.bias"][:5]}
    run = prepare(
        _spec({"freeze": "backbone", "weights": None}), dataset=colour, data_dir=tmp_path, initial_weights=five
    )
    assert torch.equal(run.model.state_dict()["backbone.conv1.weight"], first["backbone.conv1.weight"])
    assert run.model.head.out_features == 10


def test_features_larger_than_half_the_budget_are_not_cached(torch_home, colour, tmp_path):
    from models.training.engine import Limits
    from models.training.frozen import features_fit

    run = prepare(
        _spec({"freeze": "backbone"}),
        dataset=colour,
        data_dir=tmp_path,
        limits=Limits(max_parameters=10**9, max_bytes=10**9),
    )
    pretrained = find_pretrained(run.model)
    assert features_fit(pretrained, run.dataset, run.limits.max_bytes)  # 600 rows x 512 floats: 1.2 MB
    run.limits = Limits(max_parameters=10**9, max_bytes=2 * 10**6)
    assert not features_fit(pretrained, run.dataset, run.limits.max_bytes)
