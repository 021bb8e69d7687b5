import pytest
import torch
from torch import nn

from models.archs import build_model
from models.spec import JobSpec


def model_spec(**model):
    return JobSpec.model_validate({"model": model, "data": {"dataset": "fashion-mnist"}}).model


@pytest.mark.parametrize("model, params", [
    ({"arch": "softmax_regression"}, 784 * 10 + 10),
    ({"arch": "mlp", "hidden": [256]}, 784 * 256 + 256 + 256 * 10 + 10),
    ({"arch": "lenet"}, 61706),  # the course's LeNet-5 on 28x28 inputs
])
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
    net = build_model(model_spec(arch="mlp", hidden=[512], init="normal", init_std=0.01), (1, 28, 28), 10)
    first = net[1]
    assert abs(float(first.weight.detach().std()) - 0.01) < 0.001
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
