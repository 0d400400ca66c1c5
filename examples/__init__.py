"""Runnable examples of using textq from a web backend (tested in tests/test_example_*.py)."""
