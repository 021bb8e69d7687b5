"""What the tests, the benchmarks (bench/) and the docs' pictures (docs/pictures.py) share: real
processes and servers (servers), small real datasets (datagen) and the specs the end-to-end tests
submit (specs)."""
