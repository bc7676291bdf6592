"""Optional dependencies (the package's extras): one way to import them, one message when one is missing.

Every optional import of the package goes through ``require(module, extra, feature)``, which returns the module
or raises ``MissingExtraError`` (a ``ModuleNotFoundError``) with one line naming what needs it and the
``pip install "stimulative[extra]"`` that installs it; the CLI prints that line as its error. ``missing_extra``
turns a plain ``ModuleNotFoundError`` of one of those modules (raised by code that imports it directly) into
the same error. Imports nothing from the package.

Example::

    pl = require("lightning.pytorch", "lightning", "stimulative.integrations.lightning")
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "missing_extra", "require"]

# top-level module -> the extra (pyproject.toml [project.optional-dependencies]) that installs it
EXTRAS: dict[str, str] = {
    "lightning": "lightning", "accelerate": "accelerate", "transformers": "transformers", "onnx": "onnx",
    "onnxruntime": "onnx", "tensorboard": "tensorboard", "safetensors": "safetensors", "gguf": "transformers",
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed (or does not import); the message names the extra to install."""

    def __init__(self, message: str, name: str | None = None, extra: str | None = None):
        super().__init__(message, name=name)
        self.extra = extra


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def require(module: str, extra: str, feature: str = "this feature of stimulative") -> ModuleType:
    """Import the optional ``module`` (dotted names allowed), or explain how to install it.

    Args:
        module: what to import, e.g. ``"transformers"``, ``"safetensors.torch"``.
        extra: the ``stimulative[extra]`` that installs it.
        feature: what needs it, for the message (a module name, a config key, an export format).

    Raises:
        MissingExtraError: ``module`` cannot be imported: ``<feature> needs <package> (<why>): pip install
            "stimulative[<extra>]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        package = top if top in EXTRAS else extra   # torch.utils.tensorboard: the missing package is tensorboard
        raise MissingExtraError(f'{feature} needs {package} ({_reason(err)}): pip install "stimulative[{extra}]"',
                                name=module, extra=extra) from err


def missing_extra(err: BaseException) -> MissingExtraError | None:
    """``err`` as a ``MissingExtraError`` when it is one, or a ``ModuleNotFoundError`` of a module an extra
    installs (``EXTRAS``); None for anything else."""
    if isinstance(err, MissingExtraError):
        return err
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    package = err.name.split(".")[0]
    extra = EXTRAS.get(package)
    if extra is None:
        return None
    return MissingExtraError(f'{package} is not installed ({_reason(err)}): pip install "stimulative[{extra}]"',
                             name=err.name, extra=extra)
