"""The paper's analyses: network loafing, logit amplitude, effective receptive field, and a comparison report.

Each analysis is a function on a loaded model and data batches (``subnetwork_accuracy``,
``subnetwork_logit_norms``, ``effective_receptive_field``) plus a plot in ``plots``; the commands
``stimulative loafing|logits|erf|report`` wire them to checkpoints and write PNG + JSON + CSV.

Example:
    >>> import torch, stimulative as st
    >>> from stimulative.analysis import effective_receptive_field, erf_radius
    >>> heat = effective_receptive_field(torch.nn.Conv2d(3, 1, 3, padding=1), torch.randn(1, 3, 9, 9))
    >>> erf_radius(heat)["radius_px"] <= 1.5
    True
"""

from .erf import default_feature_layer, effective_receptive_field, erf_radius
from .loafing import individual_accuracy, individual_depths, loafing_summary, subnetwork_accuracy
from .logits import logit_norms, norms_by_blocks, subnetwork_logit_norms
from .report import config_diff, find_analyses, read_run, read_runs, write_report
from .runs import AnalysedRun, load_run, load_runs, select_configs

__all__ = [
    "AnalysedRun", "config_diff", "default_feature_layer", "effective_receptive_field", "erf_radius",
    "find_analyses", "individual_accuracy", "individual_depths", "load_run", "load_runs", "loafing_summary",
    "logit_norms", "norms_by_blocks", "read_run", "read_runs", "select_configs", "subnetwork_accuracy",
    "subnetwork_logit_norms", "write_report",
]
