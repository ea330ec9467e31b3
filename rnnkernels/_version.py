"""The package version, its one source: ``pyproject.toml`` reads it (setuptools parses this file
without importing the package) and ``rnnkernels.__version__`` re-exports it."""
__version__ = "0.2.0"
