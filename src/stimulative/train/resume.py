"""What a resumed run may change: the per-key policy, checked before the run directory is touched.

Resuming continues the run saved in a checkpoint: its weights, optimizer moments, RNG states and step counter. Each
key of the new config that differs from the checkpoint's (resolved) config is one of:

* **free** (``FREE``): where and how the run executes and what it evaluates and logs; the trajectory of the
  weights does not depend on them (``device``, ``threads``, ``eval_*``, ``log_every``, ``max_steps``,
  ``data.root`` for the same data moved elsewhere, ...).
* **applied** (``APPLIED``): the optimizer's hyper-parameters and the schedule's length. The optimizer's groups
  take the new values and the LR schedule is rebuilt for the new config at the checkpoint's step
  (``optim.start_schedule_at``): a lower ``optim.lr`` after a NaN stop is used from the next step, and
  ``epochs`` may grow (the schedule becomes that of a run started with the new ``epochs``, e.g. a cosine LR
  rises to the longer schedule's value at this step). One console line lists what was applied.
* **refused**: everything else (batch size, model, data, ``st.*``, ``seed``, ``optim.name``/``schedule``, ...):
  a ``ConfigError`` listing every ``key: old -> new``; nothing in the run directory has changed.

``epochs`` below the epochs the checkpoint has completed is refused too, and so is training data other than the
checkpoint's (``check_same_data``): ``data.root`` may move, but the data there must have the fingerprint the
checkpoint recorded (number of training files and their bytes; older checkpoints have none and are not checked).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, upgrade_renamed_keys

__all__ = ["FREE", "APPLIED", "ResumePolicy", "IMAGE_RESUME", "resume_changes", "check_same_data"]

FREE = frozenset({
    "name", "out_dir", "resume", "overwrite", "device", "threads", "compile", "channels_last", "deterministic",
    "eval_every", "eval_depths", "bn_recal_images", "eval_batch_size", "log_every", "stats_every", "tensorboard",
    "max_steps", "model.pretrained", "data.root", "data.download", "data.cache", "data.cache_dir", "data.workers",
    "data.strict", "data.test_subset", "data.val_resize", "data.val_crop",
})
APPLIED = frozenset({
    "epochs", "optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay", "optim.betas", "optim.min_lr",
    "optim.warmup_epochs", "optim.clip_grad", "optim.label_smoothing",
})
_SECTIONS = ("model", "data", "optim", "st", "layerskip", "adapter")


@dataclass(frozen=True)
class ResumePolicy:
    """What a resumed run of one kind may change: its ``free`` and ``applied`` keys (everything else is
    refused) and the key of its length (``epochs`` of an image run, ``steps`` of a language-model run), which
    may not fall below what the checkpoint has completed (``SavedRun.epoch`` or ``SavedRun.step``)."""

    free: frozenset = FREE
    applied: frozenset = APPLIED
    length: str | None = "epochs"  # the config key of the run's length (None: the run checks it itself)
    completed: str = "epoch"   # the SavedRun field it is compared with
    unit: str = "epochs"


IMAGE_RESUME = ResumePolicy()


def _flat(config: dict) -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if key in _SECTIONS and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def resume_changes(saved: dict, cfg: Any, completed_epochs: int, source: str,
                   policy: ResumePolicy = IMAGE_RESUME) -> list[str]:
    """Compare the checkpoint's config with ``cfg`` under the policy above.

    Args:
        saved: the checkpoint's resolved config (``SavedRun.config``).
        cfg: the new run's config (a dataclass: ``Config``, or ``LMConfig`` with its ``policy``).
        completed_epochs: epochs (with ``policy.completed == "step"``: steps) the checkpoint has completed.
        source: the checkpoint's path, for the message.
        policy: the free/applied keys and the length key (default: an image run's).

    Returns:
        ``key: old -> new`` of every applied change (empty when nothing changed).

    Raises:
        ConfigError: a refused key differs (all of them listed), or ``epochs`` is below ``completed_epochs``.
    """
    old, new = _flat(upgrade_renamed_keys(saved)), _flat(dataclasses.asdict(cfg))
    if new.get("model.num_classes") is None:  # null means "from the dataset": checked against the data later
        new["model.num_classes"] = old.get("model.num_classes")
    changed = [k for k in new if k in old and old[k] != new[k]]
    refused = [k for k in changed if k not in policy.free and k not in policy.applied]
    if refused:
        listing = ", ".join(f"{k}: {_show(old[k])} -> {_show(new[k])}" for k in refused)
        raise ConfigError(f"cannot resume {source}: the config differs from the checkpoint's in {listing}; a "
                          "resumed run must keep these keys (see docs/reliability.md); start a new run with "
                          "another name instead")
    length = getattr(cfg, policy.length) if policy.length else None
    if length is not None and length < completed_epochs:
        raise ConfigError(f"cannot resume {source}: {policy.length}: {_show(old.get(policy.length))} -> {length}, "
                          f"but the checkpoint has already completed {completed_epochs} {policy.unit}")
    return [f"{k}: {_show(old[k])} -> {_show(new[k])}" for k in changed if k in policy.applied]


def _describe(fingerprint: dict[str, Any]) -> str:
    kind, files, size = fingerprint.get("kind"), fingerprint.get("files"), fingerprint.get("bytes")
    if kind == "tokens":  # a language model's training token stream
        return f"{fingerprint.get('tokens')} training tokens (sha1 {str(fingerprint.get('sha1'))[:12]})"
    if kind == "archive":
        return f"an archive of {size} bytes"
    what = "training images" if kind == "folder" else "files"
    return f"{files} {what} of {size} bytes in all"


def check_same_data(saved: dict[str, Any] | None, current: dict[str, Any] | None, saved_root: Any, root: str,
                    source: str) -> None:
    """Refuse to resume on training data other than the checkpoint's.

    Args:
        saved: the checkpoint's ``data_fingerprint`` (None: an older checkpoint or generated data: not checked).
        current: the fingerprint of the data at ``root`` now (None: generated data or no data there; ``build_data``
            reports a missing root).
        saved_root, root: the checkpoint's ``data.root`` and the new one, for the message.
        source: the checkpoint's path, for the message.

    Raises:
        ConfigError: the fingerprints differ; the message names both roots and what each holds.
    """
    if saved is None or current is None or saved == current:
        return
    where = f"data.root {_show(root)}" if str(saved_root) != str(root) else f"data.root {_show(root)} now"
    raise ConfigError(f"cannot resume {source}: it was trained on other data ({_show(saved_root)}: "
                      f"{_describe(saved)}; {where}: {_describe(current)}); a resumed run must train on the same "
                      "data (a moved copy is fine); start a new run with another name instead")
