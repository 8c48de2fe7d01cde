"""`tomllib` on Python 3.11+, its PyPI twin `tomli` on 3.10 (same API)."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
