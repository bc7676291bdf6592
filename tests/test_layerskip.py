"""LayerSkip as a method (stimulative.lm.layerskip): the drop rates and their time schedule follow the formula, the
exit-loss weights sum to 1 and rotate with the curriculum, layer dropout does not rescale and is off at eval,
the loss is the weighted CE of the exits, and the LM trainer runs the recipe and resumes exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from test_lm_train import _args  # noqa: E402

from stimulative import hf as st_hf  # noqa: E402
from stimulative.core.droppath import set_drop_path  # noqa: E402
from stimulative.core.tokens import TokenLogits, next_token_targets  # noqa: E402
from stimulative.lm.config import ConfigError, load_lm_config  # noqa: E402
from stimulative.lm.layerskip import (  # noqa: E402
    LayerSkipStep,
    exit_layers,
    exit_loss_weights,
    layer_dropout_rates,
    time_scale,
)
from stimulative.lm.train import train_lm  # noqa: E402
from stimulative.train.checkpoint import load_checkpoint  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def test_dropout_rates_follow_the_formula():
    L, T, p = 8, 101, 0.2
    assert time_scale(0, T) == 0.0 and time_scale(T - 1, T) == pytest.approx(1.0)
    assert time_scale(50, T) == pytest.approx(math.exp(50 * math.log(2) / 100) - 1)
    assert time_scale(3, T, "constant") == 1.0
    for t in (0, 17, 100):
        rates = layer_dropout_rates(L, p, t, T)
        want = [p * (math.exp(l * math.log(2) / (L - 1)) - 1) * time_scale(t, T) for l in range(L)]  # noqa: E741
        assert rates == pytest.approx(want, abs=1e-12)
    assert layer_dropout_rates(L, p, 100, T)[-1] == pytest.approx(p)
    with pytest.raises(ValueError, match="exp"):
        time_scale(0, T, "linear")


def test_exit_weights_sum_to_one_and_rotate():
    assert exit_layers(8, 2, 0) == [0, 2, 4, 6, 7]
    assert exit_layers(8, 2, 1) == [1, 3, 5, 7]
    assert exit_layers(8, 2, 2) == exit_layers(8, 2, 0)  # period R
    assert exit_layers(8, 0, 5) == list(range(8))
    assert set(exit_layers(8, 4, 0)) | set(exit_layers(8, 4, 1)) | set(exit_layers(8, 4, 2)) | \
        set(exit_layers(8, 4, 3)) == set(range(8))
    w = exit_loss_weights([0, 1, 2, 3], 4, 0.1)
    raw = [0.1 * 1, 0.1 * 3, 0.1 * 6, 10]  # sum_l: cumulative (l + 1), e_scale on the early layers
    assert w == pytest.approx([r / sum(raw) for r in raw])
    for t in range(4):
        assert sum(exit_loss_weights(exit_layers(8, 2, t), 8, 0.2)) == pytest.approx(1.0)
    assert max(w) == w[-1]  # the last layer weighs most


def _llama(layers=4):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg).double()
    ed = st_hf.elastic_depth(hf)
    tok = TokenLogits(hf)
    return hf, ed, tok, st_hf.prefix_exits(ed, rows=tok.select_rows)


def test_loss_is_the_weighted_ce_of_the_exits():
    hf, ed, tok, exits = _llama()
    step = LayerSkipStep(ed, exits, total_steps=10, p_max=0.0, e_scale=0.2, rotation=2, model=tok)
    ids = torch.randint(0, 64, (3, 10))
    y = next_token_targets(ids)
    step.calls = 1
    losses = step(ids, y)
    on = exit_layers(4, 2, 1)
    assert on == [1, 3]
    weights = exit_loss_weights(on, 4, 0.2)
    with torch.no_grad():
        want = 0.0
        for w, layer in zip(weights, on):
            with ed.depth([layer + 1]):
                want += w * float(F.cross_entropy(tok(ids), y))
    assert losses["loss"] == pytest.approx(want, rel=1e-10)
    with torch.no_grad():
        assert losses["main"] == pytest.approx(float(F.cross_entropy(tok(ids), y)), rel=1e-10)
    assert all(p.grad is not None for p in hf.model.layers.parameters())
    assert step.calls == 2


def test_layer_dropout_rates_are_set_without_rescaling_and_off_at_eval():
    """(That a block set with scale_by_keep=False keeps its output unscaled: tests/test_droppath.py.)"""
    hf, ed, tok, exits = _llama()
    step = LayerSkipStep(ed, exits, total_steps=3, p_max=0.5, e_scale=0.1, model=tok)
    ids = torch.randint(0, 64, (64, 6))
    step.calls = 2  # S(t) = 1: the rates of the last step
    step(ids, next_token_targets(ids))
    layers = list(hf.model.layers)
    assert [b._st_drop for b in layers] == pytest.approx(layer_dropout_rates(4, 0.5, 2, 3))
    assert not any(b._st_drop_scale for b in layers)
    hf.eval()
    with torch.no_grad():
        a = tok(ids)
        set_drop_path(ed, 0.0)
        assert torch.equal(a, tok(ids))


def test_recipe_and_config_checks(tmp_path):
    cfg = load_lm_config(REPO / "recipes" / "lm_llama_layerskip.yaml")
    assert cfg.layerskip.enabled and cfg.st.num_subnets == 0 and cfg.layerskip.rotation == 2
    with pytest.raises(ConfigError, match="layerskip"):
        load_lm_config(REPO / "recipes" / "lm_llama_layerskip.yaml", ["st.num_subnets=1"])
    with pytest.raises(ConfigError, match="layerskip.time_schedule"):
        load_lm_config(REPO / "recipes" / "lm_llama_layerskip.yaml", ["layerskip.time_schedule=linear"])


def test_trainer_runs_layerskip_and_resumes_exactly(tmp_path):
    recipe = REPO / "recipes" / "lm_llama_layerskip.yaml"
    strong = ["layerskip.p_max=0.9", "layerskip.time_schedule=constant"]  # drops act at every step
    full = train_lm(recipe, _args(tmp_path, "full", "steps=6", "eval_every=3", *strong))
    assert full["step"] == 6 and math.isfinite(full["final"]["val_loss"])
    train_lm(recipe, _args(tmp_path, "cut", "steps=6", "eval_every=3", "max_steps=3", *strong))
    train_lm(recipe, _args(tmp_path, "cut", "steps=6", "eval_every=3", "resume=auto", *strong))
    train_lm(recipe, _args(tmp_path, "nodrop", "steps=6", "eval_every=3", "layerskip.p_max=0"))
    a = load_checkpoint(tmp_path / "runs" / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "runs" / "cut" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = load_checkpoint(tmp_path / "runs" / "nodrop" / "last.pt")["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the layer dropout acted
