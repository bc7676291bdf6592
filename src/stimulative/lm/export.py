"""Export the first k layers of a trained LM run as a plain ``transformers`` model directory.

``export_lm("runs/lm_st", 4, "lm_st_d4")`` writes a ``save_pretrained`` directory whose config has
``num_hidden_layers=4`` (the kept layers renumbered from 0, the final norm and LM head shared): it loads with
``AutoModelForCausalLM.from_pretrained("lm_st_d4")`` and gives the same logits as the depth-4 sub-network inside
the run. ``stimulative_lm.json`` next to it records the source run, the depth, the tokenizer and, with
``evaluate=True``, the validation loss of the export. An exit-adapter run's adapter is written beside it
(``exit_adapter.pt``, when the export keeps its layer and more), where ``stimulative generate`` finds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..io import write_json
from .adapter import ADAPTER_FILE, save_adapter
from .data import load_lm_data
from .evaluate import depth_losses
from .model import load_lm

__all__ = ["export_lm"]


def export_lm(run: str | Path, depth: int | None, out_dir: str | Path, evaluate: bool = False,
              device: str | torch.device = "cpu") -> dict[str, Any]:
    """Write the depth-``depth`` prefix (None = the whole model) of an LM run as a ``save_pretrained`` directory.

    Returns ``{"path", "depth", "num_hidden_layers", "source", "val_loss"?, "val_ppl"?}`` (also written to
    ``out_dir/stimulative_lm.json``).
    """
    from ..hf import elastic_depth, extract_pretrained

    lm = load_lm(run, device)
    ed = elastic_depth(lm.model)
    layers = ed.full_depths[0]
    k = layers if depth is None else int(depth)
    if not 1 <= k <= layers:
        raise ValueError(f"--depth must be in 1..{layers} for {run} ({layers} layers), got {depth}")
    small = extract_pretrained(ed, [k]).eval()
    ed.remove()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(out)
    tok = lm.tokenizer
    if hasattr(tok, "tokenizer"):  # a local transformers tokenizer: ship it with the model
        tok.tokenizer.save_pretrained(out)
    info: dict[str, Any] = {"path": str(out), "depth": k, "num_hidden_layers": small.config.num_hidden_layers,
                            "source": str(Path(run)), "source_layers": layers, "step": lm.checkpoint.get("step"),
                            "tokenizer": lm.config.data.tokenizer, "context": lm.config.model.context}
    if lm.exit_adapter is not None and lm.exit_adapter.layer < k:  # an adapter run: its adapter goes with the model (generate reads it there)
        save_adapter(lm.exit_adapter, out / ADAPTER_FILE, source=str(Path(run)))
        info["exit_adapter"] = ADAPTER_FILE
    else:  # an earlier export's adapter in this folder would draft for this model
        (out / ADAPTER_FILE).unlink(missing_ok=True)
    if evaluate:
        batches = load_lm_data(lm.config, train=False).val_batches(lm.config.data.val_blocks,
                                                                   lm.config.eval_batch_size)
        res = depth_losses(elastic_depth(small), batches, [k], device=device)[k]
        info.update(val_loss=res["loss"], val_ppl=res["ppl"], val_tokens=res["tokens"])
    write_json(info, out / "stimulative_lm.json")
    return info
