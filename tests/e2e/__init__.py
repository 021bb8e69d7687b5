"""The tests that start processes: real API and worker processes (the stacks of conftest.py), the
CLI and `make run` against them, the benchmarks in small, the docs' commands, and docker-compose.yml
on a private Docker engine."""
