"""Admission by cost: parameters and one training step's memory, estimated without allocating."""

from models.nets.cost import admission_problems, estimate
from models.spec.job import JobSpec

GIB = 1024**3


def spec(model: dict, dataset: str = "fashion-mnist", **fields) -> JobSpec:
    return JobSpec.model_validate({"model": model, "data": {"dataset": dataset}, **fields})


def test_the_machine_killing_mlp_is_counted_exactly_and_refused_with_its_estimate():
    huge = spec({"arch": "mlp", "hidden": [65536, 65536]})
    cost = estimate(huge, (1, 28, 28), 10)
    assert cost.parameters == (784 * 65536 + 65536) + (65536 * 65536 + 65536) + (65536 * 10 + 10)
    assert cost.weights == cost.gradients == 4 * cost.parameters  # plain sgd: no optimizer state
    problems = admission_problems(
        huge, (1, 28, 28), 10, max_parameters=500_000_000, max_bytes=12 * GIB, where="TRAINYARD_MAX_JOB_MEMORY"
    )
    assert [loc for loc, _ in problems] == [("model",), ("model",)]
    assert "4,347,133,962 parameters" in problems[0][1] and "(500,000,000)" in problems[0][1]
    assert "about 32.6 GiB" in problems[1][1] and "TRAINYARD_MAX_JOB_MEMORY (12.0 GiB)" in problems[1][1]


def test_memory_names_batch_size_when_activations_dominate():
    wide = spec({"arch": "resnet18"}, "cifar10", batch_size=4096)
    problems = admission_problems(wide, (3, 32, 32), 10, max_parameters=10**9, max_bytes=GIB, where="LIMIT")
    assert [loc for loc, _ in problems] == [("batch_size",)]
    assert "batch_size 4096" in problems[0][1] and "LIMIT (1.0 GiB)" in problems[0][1]


def test_a_distributed_job_is_admitted_by_the_memory_of_all_its_processes():
    one = spec({"arch": "resnet18"}, "cifar10", batch_size=512)
    four = spec({"arch": "resnet18"}, "cifar10", batch_size=512, distributed={"nproc_per_node": 4})
    each = estimate(spec({"arch": "resnet18"}, "cifar10", batch_size=128), (3, 32, 32), 10)
    limit = each.total * 4 - 1  # the four processes' memory, less a byte
    assert admission_problems(four, (3, 32, 32), 10, max_parameters=10**9, max_bytes=limit + 1, where="L") == []
    problems = admission_problems(four, (3, 32, 32), 10, max_parameters=10**9, max_bytes=limit, where="L")
    assert len(problems) == 1
    assert (
        "on 4 processes a machine (128 examples each)" in problems[0][1] and "or use fewer processes" in problems[0][1]
    )
    # Each process holds the model's weights, gradients and optimizer state: more than one process.
    assert each.total * 4 > estimate(one, (3, 32, 32), 10).total
    # On two machines, each machine's budget holds its own two processes, of 128 examples each.
    two_by_two = spec({"arch": "resnet18"}, "cifar10", batch_size=512, distributed={"nproc_per_node": 2, "nnodes": 2})
    assert (
        admission_problems(two_by_two, (3, 32, 32), 10, max_parameters=10**9, max_bytes=each.total * 2, where="L") == []
    )
    assert admission_problems(
        two_by_two, (3, 32, 32), 10, max_parameters=10**9, max_bytes=each.total * 2 - 1, where="L"
    )


def test_optimizer_state_and_a_frozen_backbone_are_counted():
    adam = estimate(spec({"arch": "lenet"}, optimizer={"name": "adam"}), (1, 28, 28), 10)
    assert adam.optimizer == 2 * adam.weights
    frozen = estimate(
        spec({"arch": "pretrained", "backbone": "resnet18", "weights": None, "freeze": "backbone"}, "cifar10"),
        (3, 32, 32),
        10,
    )
    assert frozen.trainable == 512 * 10 + 10 and frozen.gradients == 4 * frozen.trainable
    whole = estimate(spec({"arch": "pretrained", "backbone": "resnet18", "weights": None}, "cifar10"), (3, 32, 32), 10)
    assert whole.activations > 5 * frozen.activations


def test_a_resized_model_is_estimated_at_the_size_it_sees():
    small = estimate(spec({"arch": "lenet"}), (1, 28, 28), 10)
    resized = estimate(
        JobSpec.model_validate({"model": {"arch": "lenet"}, "data": {"dataset": "fashion-mnist", "resize": 56}}),
        (1, 28, 28),
        10,
    )
    assert resized.activations > 3 * small.activations and resized.parameters > small.parameters


def test_small_course_models_pass():
    for model in ({"arch": "softmax_regression"}, {"arch": "lenet"}, {"arch": "mlp", "hidden": [256]}):
        assert (
            admission_problems(
                spec(model), (1, 28, 28), 10, max_parameters=10**6, max_bytes=64 * 1024**2, where="LIMIT"
            )
            == []
        )
