"""Thin console entry points (``immunoplex-*`` in pyproject.toml): parse, call one stage's run."""
