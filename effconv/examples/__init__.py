"""Runnable examples: ``python -m effconv.examples.<name> --help``."""
