"""An LM run gives the same losses on the shared training engine as before it (numbers pinned from the
pre-refactor ``lm/train.py``: ``train_lm`` with its own optimiser, schedule and checkpoint code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_lm_train import REPO, TINY, text_folder  # noqa: E402

from stimulative.lm.train import train_lm  # noqa: E402

torch.set_num_threads(1)

CASES = {
    "st_llama_adamw_cosine": ("lm_llama_st", ["steps=6", "eval_every=3"]),
    "stpp_gpt2_sgd_onecycle": ("lm_llama_stpp", ["steps=4", "eval_every=2", "model.family=gpt2", "optim.name=sgd",
                                                 "optim.lr=0.05", "optim.schedule=onecycle", "optim.warmup_steps=2"]),
    "layerskip_llama_constant": ("lm_llama_layerskip", ["steps=4", "eval_every=4", "optim.schedule=constant"]),
}

# metrics.jsonl of each case, captured before the LM run moved onto the engine (float-equal or within 1e-6)
PINNED = json.loads("""
{
 "st_llama_adamw_cosine": [
  {
   "step": 3,
   "lr": 0.0013781152949374528,
   "train_loss": 5.51646384539102,
   "train_loss_main": 5.516380310058594,
   "train_loss_subnet": 8.353533242673923e-05,
   "val_loss": 5.459948221842448,
   "val_loss_d1": 5.467505137125651,
   "val_loss_d2": 5.464343388875325,
   "val_agree_d1": 0.8020833333333334,
   "val_agree_d2": 0.8854166666666666
  },
  {
   "step": 6,
   "lr": 0.0002,
   "train_loss": 5.421257578163932,
   "train_loss_main": 5.421165784200032,
   "train_loss_subnet": 9.179396389905985e-05,
   "val_loss": 5.414803822835286,
   "val_loss_d1": 5.432140350341797,
   "val_loss_d2": 5.4236094156901045,
   "val_agree_d1": 0.625,
   "val_agree_d2": 0.71875
  }
 ],
 "stpp_gpt2_sgd_onecycle": [
  {
   "step": 2,
   "lr": 0.0250001,
   "train_loss": 5.545441662550729,
   "train_loss_main": 5.545425653457642,
   "train_loss_subnet": 1.600909308763221e-05,
   "val_loss": 5.452632904052734,
   "val_loss_d1": 5.4815673828125,
   "val_loss_d2": 5.460459391276042,
   "val_agree_d1": 0.3333333333333333,
   "val_agree_d2": 0.6458333333333334
  },
  {
   "step": 4,
   "lr": 0.025000099999999994,
   "train_loss": 5.434643250441695,
   "train_loss_main": 5.4344964027404785,
   "train_loss_subnet": 0.00014684770121675683,
   "val_loss": 5.418694178263347,
   "val_loss_d1": 5.441911697387695,
   "val_loss_d2": 5.423622131347656,
   "val_agree_d1": 0.6041666666666666,
   "val_agree_d2": 0.9791666666666666
  }
 ],
 "layerskip_llama_constant": [
  {
   "step": 4,
   "lr": 0.002,
   "train_loss": 5.498496890068054,
   "train_loss_main": 5.4983971118927,
   "train_loss_subnet": 0.1727755063022951,
   "val_loss": 5.423559188842773,
   "val_loss_d1": 5.437618255615234,
   "val_loss_d2": 5.430610020955403,
   "val_agree_d1": 0.59375,
   "val_agree_d2": 0.7916666666666666
  }
 ]
}
""")


@pytest.mark.parametrize("case", sorted(CASES))
def test_lm_losses_are_those_of_the_code_before_the_engine(tmp_path, case):
    recipe, extra = CASES[case]
    summary = train_lm(REPO / "recipes" / f"{recipe}.yaml", [f"data.root={text_folder(tmp_path / 'text')}",
                       f"out_dir={tmp_path / 'runs'}", f"name={case}", *TINY, *extra])
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(PINNED[case])
    for got, want in zip(records, PINNED[case]):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (case, got["step"], key)
