import pytest
import torch
from torch import nn

from models.nets.archs import build_model
from models.spec.job import JobSpec
from tests.models.common import LENET_LAYERS


def model_spec(**model):
    return JobSpec.model_validate({"model": model, "data": {"dataset": "fashion-mnist"}}).model


@pytest.mark.parametrize(
    "model, params",
    [
        ({"arch": "softmax_regression"}, 784 * 10 + 10),
        ({"arch": "mlp", "hidden": [256]}, 784 * 256 + 256 + 256 * 10 + 10),
        ({"arch": "lenet"}, 61706),  # the course's LeNet-5 on 28x28 inputs
    ],
)
def test_output_shape_and_parameter_count(model, params):
    net = build_model(model_spec(**model), (1, 28, 28), 10)
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters()) == params


def test_lenet_options_choose_layers():
    relu_max = build_model(model_spec(arch="lenet", activation="relu", pool="max"), (1, 28, 28), 10)
    kinds = {type(m) for m in relu_max.modules()}
    assert nn.ReLU in kinds and nn.MaxPool2d in kinds and nn.Sigmoid not in kinds and nn.AvgPool2d not in kinds
    sig_avg = build_model(model_spec(arch="lenet"), (1, 28, 28), 10)
    kinds = {type(m) for m in sig_avg.modules()}
    assert nn.Sigmoid in kinds and nn.AvgPool2d in kinds


def test_mlp_activation_and_dropout_layers():
    net = build_model(model_spec(arch="mlp", hidden=[32, 16], activation="tanh", dropout=[0.2, 0.0]), (1, 28, 28), 10)
    dropouts = [m.p for m in net.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.2]
    assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == 2
    net.eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(net(x), net(x))  # dropout is off in eval mode
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(net(x), net(x))


def test_init_normal_uses_std_and_zero_bias():
    torch.manual_seed(0)
    net = build_model(model_spec(arch="mlp", hidden=[512], init="normal", init_std=0.05), (1, 28, 28), 10)
    first = net[1]
    assert abs(float(first.weight.detach().std()) - 0.05) < 0.005  # not the default 0.01
    assert float(first.bias.detach().abs().max()) == 0.0


def test_init_xavier_bounds_weights():
    net = build_model(model_spec(arch="mlp", hidden=[100], init="xavier"), (1, 28, 28), 10)
    bound = (6 / (784 + 100)) ** 0.5
    assert float(net[1].weight.detach().abs().max()) <= bound
    default = build_model(model_spec(arch="mlp", hidden=[100]), (1, 28, 28), 10)
    assert float(default[1].bias.detach().abs().max()) > 0  # PyTorch's default init leaves biases non-zero


def test_linear_regression_is_one_linear_layer():
    spec = JobSpec.model_validate({"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"}})
    net = build_model(spec.model, (3,), 1)
    assert net(torch.zeros(4, 3)).shape == (4, 1)
    assert sum(p.numel() for p in net.parameters()) == 4


def test_polynomial_features_are_scaled_powers():
    from models.nets.archs import PolynomialFeatures

    features = PolynomialFeatures(4)(torch.tensor([[2.0]]))
    torch.testing.assert_close(features, torch.tensor([[2.0, 4.0 / 2, 8.0 / 6, 16.0 / 24]]))
    spec = JobSpec.model_validate(
        {"model": {"arch": "polynomial", "degree": 20}, "data": {"dataset": "synthetic-polynomial"}}
    )
    net = build_model(spec.model, (1,), 1)
    assert net(torch.zeros(5, 1)).shape == (5, 1)
    assert sum(p.numel() for p in net.parameters()) == 21


def test_resnet18_takes_one_channel_and_resize_is_part_of_the_network():
    net = build_model(model_spec(arch="resnet18"), (1, 28, 28), 10, resize=64)
    assert net[0].size == 64 and net[1].conv1.in_channels == 1
    assert net.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert 11_000_000 < sum(p.numel() for p in net.parameters()) < 11_300_000


def test_resize_changes_what_lenet_sees():
    net = build_model(model_spec(arch="lenet"), (1, 28, 28), 10, resize=32)
    assert net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    flat = [m for m in net.modules() if isinstance(m, nn.Linear)][0]
    assert flat.in_features == 16 * 6 * 6  # 32x32 input: two conv/pool stages leave 6x6


@pytest.mark.parametrize(
    "builtin, layers",
    [
        ({"arch": "lenet"}, LENET_LAYERS),
        (
            {"arch": "mlp", "hidden": [64], "activation": "leaky_relu"},
            [
                {"type": "flatten"},
                {"type": "linear", "out_features": 64},
                {"type": "leaky_relu"},
                {"type": "linear", "out_features": 10},
            ],
        ),
        (
            {"arch": "mlp", "hidden": [32], "activation": "gelu"},
            [
                {"type": "flatten"},
                {"type": "linear", "out_features": 32},
                {"type": "gelu"},
                {"type": "linear", "out_features": 10},
            ],
        ),
    ],
)
def test_sequential_builds_the_same_network_with_the_same_weights(builtin, layers):
    torch.manual_seed(0)
    a = build_model(model_spec(**builtin), (1, 28, 28), 10)
    torch.manual_seed(0)
    b = build_model(model_spec(arch="sequential", layers=layers), (1, 28, 28), 10)
    assert [type(m) for m in a] == [type(m) for m in b]
    for (name_a, pa), (name_b, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name_a == name_b and torch.equal(pa, pb)


def test_sequential_batchnorm_and_dropout_pick_the_right_kind():
    layers = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "batchnorm"},
        {"type": "dropout", "p": 0.3},
        {"type": "linear", "out_features": 10},
    ]
    net = build_model(model_spec(arch="sequential", layers=layers), (1, 28, 28), 10)
    assert (
        isinstance(net[1], nn.BatchNorm2d) and isinstance(net[5], nn.BatchNorm1d) and net[5].num_features == 4 * 13 * 13
    )
    assert net[6].p == 0.3 and net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_weights_of_another_network_are_told_apart_by_their_first_difference():
    from models.nets.state_dict import state_mismatch

    softmax = build_model(model_spec(arch="softmax_regression"), (1, 28, 28), 10)
    mlp = build_model(model_spec(arch="mlp", hidden=[8]), (1, 28, 28), 10)
    assert state_mismatch(mlp, mlp.state_dict()) is None
    assert state_mismatch(mlp, softmax.state_dict()) == (
        "1.weight is 10x784 in them and 8x784 here (and 1 more tensor(s) differ); they lack 3.weight and 1 more"
    )
    assert state_mismatch(softmax, mlp.state_dict()) == (
        "1.weight is 8x784 in them and 10x784 here (and 1 more tensor(s) differ); "
        "they hold 3.weight and 1 more that this model has not"
    )
