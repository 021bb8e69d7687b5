"""The benchmarks, each a module run from the repository's folder: `.venv/bin/python -m bench.predict`."""
