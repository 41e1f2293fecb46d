"""Benchmarks of the scoring platform (``make bench``); not part of the test suite."""
