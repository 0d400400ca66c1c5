"""textq benchmark harness: `python -m bench --help`; what it measures and the results are in docs/benchmarks.md."""
