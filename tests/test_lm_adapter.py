"""The exit adapter on a frozen LM (stimulative.lm.adapter): an untrained adapter is the plain shared-head exit,
the exit runs the first k layers only, training moves the adapter and never the model, the loss is the token KL to
the full model, agreement grows, and a saved adapter loads back bit-identical."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from stimulative.lm.adapter import (  # noqa: E402
    ExitAdapter,
    adapter_loss,
    exit_logits,
    load_adapter,
    save_adapter,
    train_exit_adapter,
)

torch.set_num_threads(1)


def _model(family="llama", layers=4):
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=layers,
                                                                    n_head=2, n_positions=64))
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_untrained_adapter_is_the_shared_head_exit_and_runs_k_layers(family):
    model = _model(family).eval()
    adapter = ExitAdapter(32, layer=2, rank=16)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        base = model.model if family == "llama" else model.transformer
        norm = base.norm if family == "llama" else base.ln_f
        want = model.lm_head(norm(out.hidden_states[2]))
        calls = []
        layers = base.layers if family == "llama" else base.h
        hooks = [layer.mlp.register_forward_pre_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(layers)]
        got = exit_logits(model, adapter, ids)
        for h in hooks:
            h.remove()
    torch.testing.assert_close(got, want)
    assert calls == [0, 1]  # the exit runs the first 2 layers only


def test_training_moves_the_adapter_only_and_raises_agreement():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    adapter = ExitAdapter(32, layer=1, rank=32)
    torch.manual_seed(1)
    batches = [torch.randint(0, 40, (4, 16)) for _ in range(4)]
    _, start = adapter_loss(model, adapter, batches[0])
    history = train_exit_adapter(model, adapter, batches, steps=60, lr=3e-3, warmup_steps=1, log_every=20)
    _, end = adapter_loss(model, adapter, batches[0])
    assert [r["step"] for r in history] == [20, 40, 60]
    assert end["kl"] < 0.5 * start["kl"] and end["agree"] > start["agree"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the full model is bit-identical
    assert [p.requires_grad for p in model.parameters()] == flags and model.training


def test_loss_is_the_token_kl_to_the_full_model_without_padding():
    model = _model().eval()
    adapter = ExitAdapter(32, layer=2, rank=8)
    torch.nn.init.normal_(adapter.up.weight, std=0.1)
    ids = torch.randint(0, 40, (2, 8))
    ids[1, 5:] = -100  # padding: positions predicting or reading it are excluded
    loss, _ = adapter_loss(model, adapter, ids)
    clean = ids.clamp_min(0)
    with torch.no_grad():
        full = model(clean).logits
    student = exit_logits(model, adapter, clean)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False
    s, t = student[:, :-1][keep], full[:, :-1][keep]
    want = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert adapter.up.weight.grad is not None and all(p.grad is None for p in model.parameters())


def test_save_and_load_round_trip_and_bad_inputs(tmp_path):
    adapter = ExitAdapter(32, layer=3, rank=8)
    torch.nn.init.normal_(adapter.up.weight)
    path = save_adapter(adapter, tmp_path / "a.pt", source="x")
    loaded = load_adapter(path)
    assert (loaded.layer, loaded.rank) == (3, 8)
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), loaded.state_dict().values()))
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="exit adapter"):
        load_adapter(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_adapter(tmp_path / "missing.pt")
    model = _model(layers=4)
    with pytest.raises(ValueError, match="layer 4"):
        exit_logits(model, ExitAdapter(32, layer=4), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden_size"):
        exit_logits(model, ExitAdapter(16, layer=1), torch.zeros(1, 3, dtype=torch.long))


def test_chunked_training_equals_one_run_and_evaluation_matches_the_loss():
    from stimulative.lm.adapter import adapter_optimizer, evaluate_adapter

    model = _model()
    torch.manual_seed(1)
    batches = [torch.randint(0, 40, (2, 12)) for _ in range(6)]
    one = ExitAdapter(32, layer=2, rank=8)
    two = ExitAdapter(32, layer=2, rank=8)
    two.load_state_dict(one.state_dict())
    train_exit_adapter(model, one, batches, steps=6, lr=1e-2, warmup_steps=4, log_every=6)
    opt = adapter_optimizer(two, lr=1e-2)
    train_exit_adapter(model, two, batches[:3], steps=3, lr=1e-2, warmup_steps=4, optimizer=opt)
    state = opt.state_dict()
    opt = adapter_optimizer(two, lr=1e-2)
    opt.load_state_dict(state)  # as a resumed run does
    rows = train_exit_adapter(model, two, batches[3:], steps=3, lr=1e-2, warmup_steps=4, optimizer=opt,
                              first_step=3, log_every=3)
    assert rows[-1]["step"] == 6
    for a, b in zip(one.state_dict().values(), two.state_dict().values()):
        torch.testing.assert_close(a, b)
    res = evaluate_adapter(model, one, batches[:2])
    model.eval()
    with torch.no_grad():
        logits = torch.cat([exit_logits(model, one, b)[:, :-1].reshape(-1, 40) for b in batches[:2]])
        full = torch.cat([model(b).logits[:, :-1].reshape(-1, 40) for b in batches[:2]])
    target = torch.cat([b[:, 1:].reshape(-1) for b in batches[:2]])
    assert res["tokens"] == target.numel()
    assert res["loss"] == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)
    assert res["agree"] == pytest.approx(float((logits.argmax(-1) == full.argmax(-1)).float().mean()))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoding_with_an_adapter_is_plain_greedy(family):
    """The drafts go through the adapter (it is called), the verification does not: the output is
    model.generate's, whatever the adapter says; a trained adapter is accepted more often than a random one."""
    from stimulative.lm import generate

    model = _model(family, layers=4)
    torch.manual_seed(2)
    batches = [torch.randint(0, 40, (4, 16)) for _ in range(4)]
    trained = ExitAdapter(32, layer=2, rank=32)
    train_exit_adapter(model, trained, batches, steps=80, lr=3e-3, warmup_steps=1)
    noisy = ExitAdapter(32, layer=2, rank=32)
    torch.nn.init.normal_(noisy.up.weight, std=3.0)
    model.eval()
    calls = []
    noisy.register_forward_hook(lambda *a: calls.append(1))
    accepted = {}
    for name, adapter in (("trained", trained), ("noisy", noisy)):
        total = [0, 0]
        for seed in range(4):
            ids = torch.randint(3, 40, (1, 6), generator=torch.Generator().manual_seed(seed))
            out = generate(model, ids, None, max_new_tokens=24, exit_adapter=adapter, adaptive=False,
                           eos_token_id=[], confidence_threshold=0.0)
            want = model.generate(ids, do_sample=False, max_new_tokens=24, eos_token_id=None,
                                  attention_mask=torch.ones_like(ids), pad_token_id=0)
            assert torch.equal(out.sequences, want)
            total[0] += out.accepted
            total[1] += out.drafted
        accepted[name] = total[0] / total[1]
    assert calls and accepted["trained"] > accepted["noisy"]
    with pytest.raises(ValueError, match="layer 2"):
        generate(model, torch.tensor([[3, 4]]), 3, max_new_tokens=2, exit_adapter=trained)
