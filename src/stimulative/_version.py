"""The package version, in one place (the facade and ``provenance`` import it; pyproject.toml repeats it)."""

__version__ = "0.1.0"
