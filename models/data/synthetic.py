"""Synthetic regression data of the course's chapters, generated from a seed."""

from __future__ import annotations

import hashlib

import torch

from models.data.contract import InputContract
from models.data.dataset import Dataset
from models.spec.job import SyntheticLinearSpec, SyntheticPolynomialSpec


def synthetic_linear(spec: SyntheticLinearSpec, seed: int) -> Dataset:
    """y = Xw + b + noise with X ~ N(0, 1), as in the linear-regression chapter."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.tensor(spec.true_w, dtype=torch.float32)
    total = spec.num_examples + spec.num_test
    x = torch.randn(total, len(w), generator=generator)
    y = x @ w + spec.true_b + torch.randn(total, generator=generator) * spec.noise
    y = y.unsqueeze(1)
    digest = hashlib.sha256(spec.model_dump_json().encode() + str(seed).encode()).hexdigest()
    n = spec.num_examples
    return Dataset(
        name=spec.dataset,
        task="regression",
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        checksum=digest,
        contract=InputContract.tabular(len(w)),
    )


def synthetic_polynomial(spec: SyntheticPolynomialSpec, seed: int) -> Dataset:
    """y = sum_i c_i x^i / i! + noise with x ~ N(0, 1): the polynomial-fitting chapter's data."""
    generator = torch.Generator().manual_seed(seed)
    total = spec.n_train + spec.n_test
    x = torch.randn(total, 1, generator=generator, dtype=torch.float64)
    powers = torch.arange(len(spec.coefficients), dtype=torch.float64)
    features = x.pow(powers) / torch.exp(torch.lgamma(powers + 1))
    y = features @ torch.tensor(spec.coefficients, dtype=torch.float64)
    y = (y + torch.randn(total, generator=generator, dtype=torch.float64) * spec.noise).unsqueeze(1)
    x, y = x.float(), y.float()
    digest = hashlib.sha256(spec.model_dump_json().encode() + str(seed).encode()).hexdigest()
    n = spec.n_train
    return Dataset(
        name=spec.dataset,
        task="regression",
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        checksum=digest,
        contract=InputContract.tabular(1),
    )
