"""The paper's analyses: network loafing, logit amplitude, effective receptive field, and a comparison report.

Each analysis is a function on a model and data batches (``subnetwork_accuracy``, ``subnetwork_logit_norms``,
``effective_receptive_field``), a function on opened runs that returns its table (``loafing_analysis``,
``logits_analysis``, ``erf_analysis``) and a writer of its JSON/CSV/PNG (``write_loafing`` ...); ``report``
builds one HTML page from what was written (``compute_analysis`` computes what is missing). The commands
``stimulative loafing|logits|erf|report`` only parse options, call these and print.

Example:
    >>> import torch, stimulative as st
    >>> from stimulative.analysis import effective_receptive_field, erf_radius
    >>> heat = effective_receptive_field(torch.nn.Conv2d(3, 1, 3, padding=1), torch.randn(1, 3, 9, 9))
    >>> erf_radius(heat)["radius_px"] <= 1.5
    True
"""

import warnings
from typing import Any

from .erf import default_feature_layer, effective_receptive_field, erf_analysis, erf_radius, write_erf
from .loafing import (
    alone_accuracy,
    alone_depths,
    loafing_analysis,
    loafing_summary,
    subnetwork_accuracy,
    write_loafing,
)
from .logits import logit_norms, logits_analysis, norms_by_blocks, subnetwork_logit_norms, write_logits
from .report import compute_analysis, config_diff, find_analyses, read_runs, write_report

__all__ = [
    "alone_accuracy", "alone_depths", "compute_analysis", "config_diff", "default_feature_layer",
    "effective_receptive_field", "erf_analysis", "erf_radius", "find_analyses", "loafing_analysis", "loafing_summary",
    "logit_norms", "logits_analysis", "norms_by_blocks", "read_runs", "subnetwork_accuracy",
    "subnetwork_logit_norms", "write_erf", "write_loafing", "write_logits", "write_report",
]


_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    """The names of version 0.1.0 (``individual_accuracy``, ``individual_depths``, ``read_run``), read until the
    next release."""
    from . import loafing

    if name in loafing._RENAMED:
        return getattr(loafing, name)
    if name == "read_run":
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn("stimulative.analysis.read_run is deprecated: open a trained run with "
                          "stimulative.open_run(path); the report reads runs with stimulative.analysis.read_runs; "
                          "the old name is read until the next release", DeprecationWarning, stacklevel=2)
        from .report import _read_run

        return _read_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
