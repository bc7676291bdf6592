"""Prefix exits (core.exits): sub-networks read off one forward give the same losses and parameter gradients as
today's separate sub-network forwards (float64), for Llama, GPT-2, HF ViT, timm ViT and torchvision ViT; steps
they cannot serve keep the separate passes."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import stimulative as st
from stimulative.core.exits import PrefixExits, vision_prefix_exits
from stimulative.core.step import prefix_step_applies

transformers = pytest.importorskip("transformers")

from stimulative import hf as st_hf  # noqa: E402
from stimulative.core.tokens import IGNORE_INDEX, TokenLogits, next_token_targets  # noqa: E402

torch.set_num_threads(1)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, n_positions=64, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _lm_case(build, padded: bool):
    torch.manual_seed(0)
    hf = build().double().train()
    ed = st_hf.elastic_depth(hf)
    ids = torch.randint(0, 64, (3, 12))
    if padded:
        ids[0, :4] = IGNORE_INDEX  # left padding
        ids[2, 9:] = IGNORE_INDEX  # right padding
    tok = TokenLogits(hf)
    return ed, tok, ids, next_token_targets(ids), st_hf.prefix_exits(ed, rows=tok.select_rows)


def _hf_vit_case():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=5)
    hf = transformers.ViTForImageClassification(cfg).double().train()
    ed = st_hf.elastic_depth(hf)
    return ed, ed.model, torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (4,)), \
        st_hf.prefix_exits(ed)


def _timm_vit_case():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=4, embed_dim=32,
                              num_heads=2, num_classes=5, dynamic_img_size=True,
                              dynamic_img_pad=True).double().train()
    ed = st.ElasticDepth(model)
    return ed, model, torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (4,)), \
        vision_prefix_exits(ed)


def _tv_vit_case():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=4, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=5).double().train()
    ed = st.ElasticDepth(model)
    return ed, model, torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 5, (4,)), \
        vision_prefix_exits(ed)


CASES = {
    "llama": lambda: _lm_case(_llama, padded=False),
    "llama_padded": lambda: _lm_case(_llama, padded=True),
    "gpt2": lambda: _lm_case(_gpt2, padded=False),
    "hf_vit": _hf_vit_case,
    "timm_vit": _timm_vit_case,
    "torchvision_vit": _tv_vit_case,
}


def _step(ed, model, exits, kl):
    space = st.SampleSpace.ordered(ed.full_depths, ed.min_depths, seed=3)
    return st.StimulativeStep(ed, space, num_subnets=3, kl_norm=kl, amplitude="adaptive" if kl == "layer" else 1.0,
                              kl_weight=0.5, model=model, exits=exits)


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kl", ["plain", "layer"])
@pytest.mark.parametrize("case", list(CASES))
def test_one_forward_equals_separate_forwards(case, kl):
    ed, model, x, y, exits = CASES[case]()
    assert isinstance(exits, PrefixExits)
    assert exits.matches(model, x)  # the self-check the step runs once (two forwards, eval mode)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    separate = _step(ed, model, None, kl)
    losses_a = separate(x, y)
    grads_a = _grads(ed.model)
    ed.model.zero_grad(set_to_none=True)
    passes_separate, calls[:] = len(calls), []
    one = _step(ed, model, exits, kl)
    losses_b = one(x, y)
    grads_b = _grads(ed.model)
    assert one.last_configs == separate.last_configs and len(one.last_configs) == 3
    assert passes_separate == 4 and len(calls) == 1  # one forward instead of 1 + 3
    for key in ("main", "subnet", "loss"):
        assert losses_b[key] == pytest.approx(losses_a[key], rel=1e-12, abs=1e-12)
    assert grads_a.keys() == grads_b.keys()
    # Llama's RMSNorm computes in float32 whatever the model's dtype: summing the losses before that float32
    # stage (one backward) or after it (one backward per pass) rounds differently at float32 precision (~1e-7)
    rel = 1e-5 if case.startswith("llama") else 1e-10
    for name, a in grads_a.items():
        err = float((grads_b[name] - a).abs().max())
        assert err <= rel * float(a.abs().max()) + 1e-15, (name, err, float(a.abs().max()))


def test_exit_outputs_equal_the_skipped_forward():
    ed, tok, ids, _, exits = CASES["llama_padded"]()
    full, outs = exits(tok, ids, [1, 3, 4])
    assert outs[2] is full
    for d, out in zip([1, 3], outs):
        with ed.depth([d]):
            torch.testing.assert_close(out, tok(ids), rtol=1e-12, atol=1e-12)


def _never(*args, **kwargs):
    raise AssertionError("the exits must not be used for this step")


@pytest.mark.parametrize("change", [dict(min_input_scale=0.5), dict(subnet_fraction=0.5),
                                    dict(project_conflicts=True), dict(stats_every=1), dict(sampling="stochastic")])
def test_steps_the_exits_cannot_serve_keep_separate_passes(change):
    ed, model, x, y, _ = _timm_vit_case()
    change = dict(change)
    space = st.SampleSpace.for_model(ed, change.pop("sampling", "ordered"), seed=0)
    step = st.StimulativeStep(ed, space, num_subnets=2, model=model, exits=PrefixExits(ed, _never), **change)
    step(x, y)  # the tail would raise if the exits were used
    assert len(step.last_configs) == 2


def test_multi_stage_models_have_no_prefix_exits():
    ed = st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))
    assert vision_prefix_exits(ed) is None
    with pytest.raises(ValueError, match="one stage"):
        PrefixExits(ed, lambda h, x: h)
    assert not prefix_step_applies(st.SampleSpace.ordered(ed.full_depths))


def test_docs_lm_one_forward_snippet_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "lm.md").read_text()
    section = text[text.index("## One forward for all the exits"):text.index("## LayerSkip, the peer")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "docs/lm.md", "exec"), namespace)
    assert set(namespace["losses"]) == {"loss", "main", "subnet"}
    assert namespace["step"].exits is not None and len(namespace["step"].last_configs) == 3


def test_a_tail_that_is_not_the_models_falls_back_to_separate_passes():
    """A model whose output is more than norm + head (here: soft-capped logits) fails the self-check: the step
    warns once and runs separate passes (what evaluation computes)."""
    ed, model, x, y, _ = _timm_vit_case()
    wrong = PrefixExits(ed, lambda h, x: 30 * torch.tanh(model.forward_head(model.norm(h)) / 30) + 1.0)
    step = _step(ed, model, wrong, "plain")
    with pytest.warns(UserWarning, match="separate"):
        step(x, y)
    assert wrong.verified is False
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    step(x, y)
    assert len(calls) == 4  # main + 3 separate sub-network passes


def test_dropout_in_train_mode_keeps_separate_passes():
    """Exits would share the main pass's dropout draws; separate passes draw their own: not the same step."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, n_positions=64)  # dropout 0.1
    hf = transformers.GPT2LMHeadModel(cfg).train()
    ed = st_hf.elastic_depth(hf)
    tok = TokenLogits(hf)
    exits = st_hf.prefix_exits(ed, rows=tok.select_rows)
    from stimulative.core.exits import random_layers_active

    assert random_layers_active(hf)
    calls = []
    tok.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 64, (2, 9))
    _step(ed, tok, exits, "plain")(ids, next_token_targets(ids))
    assert len(calls) == 4


def test_engine_reads_a_vit_s_sub_networks_off_the_main_forward(tmp_path, capsys):
    """`stimulative train` on a single-stage model uses the exits by default (one line says so); the run matches
    st.prefix_exits=false up to float rounding."""
    from test_engine import tiny_config

    import stimulative.train.engine as engine
    from stimulative.io import read_jsonl

    vit = ["model.name=timm/vit_tiny_patch16_224",
           "model.kwargs={img_size: 16, patch_size: 4, depth: 3, embed_dim: 32, num_heads: 2}",
           "st.num_subnets=2", "epochs=1", "optim.lr=0.01"]
    engine.train(tiny_config(tmp_path, "exits", *vit))
    assert capsys.readouterr().out.count("read off the main forward") == 1
    engine.train(tiny_config(tmp_path, "separate", *vit, "st.prefix_exits=false"))
    assert "read off the main forward" not in capsys.readouterr().out
    a, b = (read_jsonl(tmp_path / n / "metrics.jsonl")[-1] for n in ("exits", "separate"))
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_self_check_under_autocast_inside_the_model_call_and_modes_kept():
    """The engine autocasts inside the model call: the tails run under the same autocast, so the check passes;
    a submodule the user put in eval stays in eval after the check."""
    from stimulative.core.exits import random_layers_active
    from stimulative.train.runtime import AutocastForward

    ed, model, x, y, exits = _timm_vit_case()
    model.float()
    x = x.float()
    model.blocks[0].mlp.drop1.eval()
    wrapped = AutocastForward(model, "cpu", torch.bfloat16)
    assert exits.matches(wrapped, x)
    assert not model.blocks[0].mlp.drop1.training and model.blocks[1].mlp.drop1.training
    assert not random_layers_active(model)
    drop = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                             num_classes=5, drop_path_rate=0.3).train()
    assert random_layers_active(drop)  # timm's DropPath


def test_padding_only_rows_leave_the_check_for_the_next_batch():
    ed, tok, ids, _, exits = CASES["llama_padded"]()
    ids = ids.clone()
    ids[:2, 1:] = IGNORE_INDEX  # rows 0-1: one real token each, no next-token position
    assert not exits.matches(tok, ids) and exits.verified is None
    assert exits.matches(tok, ids[2:].repeat(2, 1)) and exits.verified
