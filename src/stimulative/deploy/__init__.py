"""Deploying what was trained: standalone sub-networks in five formats (``export``), the accuracy / cost
trade-off of every depth and the pick under a budget (``pareto``), and sub-network training while fine-tuning
another model, e.g. a detector's backbone (``finetune``)."""

from .export import EXPORT_FORMATS, export_backbone, export_model, export_run, extract_subnetwork
from .finetune import StimulativeFinetune, detection_input_scale
from .pareto import pareto_front, pareto_table, select_under_budget

__all__ = [
    "EXPORT_FORMATS", "StimulativeFinetune", "detection_input_scale", "export_backbone", "export_model",
    "export_run", "extract_subnetwork", "pareto_front", "pareto_table", "select_under_budget",
]
