"""The method: depth-elastic models, sub-network sampling, the ST/ST++ losses and training step, BatchNorm helpers
and evaluation. Nothing here knows about configs, files, data sets or the command line (docs/method.md).

* ``elastic``: ``ElasticDepth`` runs any residual model with blocks skipped; ``parse_depths``/``format_depths``.
* ``sampling``: ``SampleSpace`` (ordered, inter-stage, stochastic, raw).
* ``losses``: KL, KL- normalisation, the sub-network losses, the KL-weight schedule.
* ``step``: ``StepOptions``, ``stimulative_step`` (the work) and ``StimulativeStep`` (options, RNG, schedule;
  ``from_config``).
* ``bn``: ``frozen_bn_stats``, ``recalibrate_bn`` and ``recalibrated`` (save, re-estimate, measure, restore).
* ``evaluation``: ``evaluate`` and ``evaluate_depth``.
* ``droppath``: stochastic depth / LayerDrop / LayerSkip rates on the blocks (``set_drop_path``).
* ``exits``: ``PrefixExits`` (prefix sub-networks read off one forward).
* ``tokens``: ``TokenLogits`` and ``next_token_targets`` (the step on next-token rows of a causal LM).
"""

from .bn import frozen_bn_stats, recalibrate_bn, recalibrated
from .elastic import BRANCH, RUN, SKIP, ElasticDepth, find_stages, format_depths, parse_depths
from .evaluation import evaluate, evaluate_depth
from .losses import kl_loss, normalize_logits, subnet_loss
from .sampling import SampleSpace
from .step import NonFiniteLossError, StepOptions, StimulativeStep, stimulative_step

__all__: list[str] = [
    "BRANCH", "RUN", "SKIP", "ElasticDepth", "NonFiniteLossError", "SampleSpace", "StepOptions", "StimulativeStep",
    "evaluate",
    "evaluate_depth", "find_stages", "format_depths", "frozen_bn_stats", "kl_loss", "normalize_logits",
    "parse_depths", "recalibrate_bn", "recalibrated", "stimulative_step", "subnet_loss",
]
