"""Shim for Beam's --setup_file: Beam stages an sdist of the project for its workers and, without
the `build` package, builds it with `python setup.py sdist`. The metadata is in pyproject.toml.
See docs/deploy.md, "Shipping the code"."""
from setuptools import setup

setup()
