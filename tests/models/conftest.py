"""Fixtures shared by the models' tests."""

from __future__ import annotations

import socket

import pytest

from tests.support.datagen import make_idx_dataset


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A small FashionMNIST in the IDX layout: 600 training and 200 test images."""
    root = tmp_path_factory.mktemp("idx-data")
    make_idx_dataset(root, "FashionMNIST", n_train=600, n_test=200)
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to connect fails and is counted."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network is unreachable (blocked by the test)")

    def resolve(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("name resolution blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return attempts
