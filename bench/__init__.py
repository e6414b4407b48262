"""arbridge benchmarks: `make bench` (python -m bench) runs them and records the figures."""
