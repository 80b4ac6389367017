"""Tests of nimbuild.builder.engines, one module per module of the package (fixtures: conftest.py)."""
