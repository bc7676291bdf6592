"""The exception types that the command line reports as one clean line (no traceback)."""

from __future__ import annotations

__all__ = ["EXPECTED_ERRORS", "DataError"]


class DataError(ValueError):
    """Missing, empty or corrupt data."""


# ValueError covers ConfigError, CheckpointError, DataError and the API's validation errors;
# FloatingPointError covers NonFiniteLossError.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                    FloatingPointError, TypeError)
