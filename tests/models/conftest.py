"""Fixtures shared by the models' tests."""

from __future__ import annotations

import socket

import pytest


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
