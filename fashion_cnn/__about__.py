"""The package version, in one place: pyproject.toml reads it, ``fashion_cnn.__version__`` re-exports it."""

__version__ = "0.1.0"
