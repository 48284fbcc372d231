"""Real models and data for tests and benchmarks, built from PyPI/Debian packages and cached outside git."""
