"""Which backend configurations an end-to-end test of the `stack` fixture (tests/e2e/conftest.py)
runs on: both by default, the embedded one alone where the backend cannot change the outcome."""

from __future__ import annotations

import pytest

# For behaviour that the database and the broker only carry (validation, what training computes,
# what is derived from a job's records): the embedded stack alone. Whatever the backend can change
# (claiming and leases, locking and conflicts, outages, queries that list, order or count, broker
# routing, where a sweep's study lives) stays on both, and so does one whole path on each: a job
# submitted, trained by a real worker, recorded and served (tests/e2e/test_end_to_end.py).
embedded_only = pytest.mark.parametrize("stack", ["embedded"], indirect=True)
