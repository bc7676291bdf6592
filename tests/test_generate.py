"""stimulative.lm.generate: self-speculative decoding that reuses the draft's work equals plain greedy decoding;
the ``stimulative generate`` command on an LM run directory and on an exported directory."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from stimulative.cli import main  # noqa: E402
from stimulative.lm import SpeculativeOutput, generate  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
VOCAB, LAYERS, NEW = 64, 4, 30


def tiny(family: str, variant: str = "random", impl: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A 4-layer model; ``agree``: the last layers' residual outputs scaled down (the early exits agree with the
    full model), ``disagree``: scaled up (they rarely agree)."""
    torch.manual_seed(seed)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                       attn_implementation=impl, bos_token_id=None, eos_token_id=None)
        model = transformers.LlamaForCausalLM(cfg)
        outs = [[layer.self_attn.o_proj, layer.mlp.down_proj] for layer in model.model.layers]
    else:
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=2, n_positions=128,
                                      attn_implementation=impl, bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(cfg)
        outs = [[block.attn.c_proj, block.mlp.c_proj] for block in model.transformer.h]
    scale = {"random": 1.0, "agree": 0.05, "disagree": 30.0}[variant]
    with torch.no_grad():
        for projections in outs[1:]:
            for p in projections:
                p.weight.mul_(scale)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def greedy(model, prompt: torch.Tensor, new: int, **kwargs) -> torch.Tensor:
    # an explicit mask: generate would otherwise mask prompt tokens equal to the pad token
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new,
                          **kwargs)


def prompts(seed: int, lengths=(1, 6, 19)) -> list[torch.Tensor]:
    """Random prompts without the pad id 0 (a prompt holding it is masked by model.generate: test_generate_exact)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (1, n), generator=g) for n in lengths]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["random", "agree", "disagree"])
def test_equals_plain_greedy(family, variant):
    model = tiny(family, variant)
    drafted = accepted = 0
    for p in prompts(hash((family, variant)) % 1000):
        ref = greedy(model, p, NEW)
        for k in range(1, LAYERS):  # k = 1 .. L - 1
            for new in (1, 2, 9, NEW):  # greedy without EOS: a shorter output is a prefix of the longer one
                for draft in ({}, {"max_draft_tokens": 3, "confidence_threshold": 0.0, "adaptive": False}):
                    out = generate(model, p, exit_layer=k, max_new_tokens=new, **draft)
                    assert torch.equal(out.sequences, ref[:, :p.shape[1] + new]), (k, new, draft)
                    assert len(out.new_tokens) == new
                    drafted, accepted = drafted + out.drafted, accepted + out.accepted
    assert drafted > 0 and 0 < accepted <= drafted


def test_acceptance_follows_agreement_and_falls_back_to_greedy():
    p = prompts(1, lengths=(5,))[0]
    # a random model's draft is never confident (near-uniform probabilities): one drafted token per round
    agree = generate(tiny("llama", "agree"), p, exit_layer=1, max_new_tokens=60)
    assert agree.acceptance > 0.9 and agree.drafted == agree.rounds
    agree = generate(tiny("llama", "agree"), p, exit_layer=1, max_new_tokens=60, confidence_threshold=0.0)
    assert agree.acceptance > 0.6 and agree.tokens_per_forward > 4 and agree.greedy_steps <= 1
    model = tiny("llama", "disagree")
    ref = greedy(model, p, 60)
    fixed = generate(model, p, exit_layer=1, max_new_tokens=60, adaptive=False, confidence_threshold=0.0)
    adaptive = generate(model, p, exit_layer=1, max_new_tokens=60, confidence_threshold=0.0)
    assert torch.equal(fixed.sequences, ref) and torch.equal(adaptive.sequences, ref)
    assert fixed.acceptance < 0.5 and fixed.greedy_steps <= 1  # the last token has no room for a draft
    # drafting does not pay: mostly plain greedy steps, a few probing rounds
    assert adaptive.greedy_steps > 30 and adaptive.drafted < fixed.drafted / 2
    assert adaptive.full_forwards == adaptive.rounds + adaptive.greedy_steps
    plain = generate(model, p, exit_layer=1, max_new_tokens=60, max_draft_tokens=0)
    assert torch.equal(plain.sequences, ref) and plain.greedy_steps == 60 and plain.drafted == 0
    assert plain.tokens_per_forward == 1.0


def test_plain_greedy_steps_read_the_draft_head_on_every_fourth_step_only(monkeypatch):
    """With a large vocabulary the draft head costs a sizeable share of a forward: the adaptive fallback's greedy
    steps read it on every 4th step (to follow the exit's agreement), not on every step."""
    from stimulative.lm import speculative

    calls = []
    real = speculative._Stack.draft_logits
    monkeypatch.setattr(speculative._Stack, "draft_logits", lambda self, h: calls.append(1) or real(self, h))
    p = prompts(1, lengths=(5,))[0]
    model = tiny("llama", "disagree")
    out = generate(model, p, exit_layer=1, max_new_tokens=60, confidence_threshold=0.0)
    assert torch.equal(out.sequences, greedy(model, p, 60))
    assert out.greedy_steps > 30
    # every drafted token read the head once; the greedy steps read it on steps 0, 4, 8, ... of their count
    assert len(calls) <= out.drafted + (out.greedy_steps + 3) // 4 + out.rounds


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eos_and_max_new_tokens_inside_a_draft(family):
    model = tiny(family, "agree")
    long = {"confidence_threshold": 0.0, "max_draft_tokens": 16, "adaptive": False}
    for p in prompts(2, lengths=tuple(range(3, 17))):  # one whose output has a token first seen at step 6..9
        ref = greedy(model, p, NEW)[0, p.shape[1]:].tolist()
        pos = next((i for i in range(5, 9) if ref[i] not in ref[:i]), None)
        if pos is not None and generate(model, p, 1, pos + 1, **long).full_forwards == 1:
            break
    else:
        pytest.fail("no prompt with a fresh token inside the first draft")
    eos = ref[pos]
    out = generate(model, p, exit_layer=1, max_new_tokens=NEW, eos_token_id=eos, **long)
    assert out.new_tokens.tolist() == ref[:pos + 1]
    assert torch.equal(out.sequences, greedy(model, p, NEW, eos_token_id=eos))
    assert out.full_forwards == 1  # EOS was drafted and accepted in the first round
    out = generate(model, p, exit_layer=1, max_new_tokens=NEW, eos_token_id=[VOCAB + 5, eos])  # a list works too
    assert out.new_tokens.tolist() == ref[:pos + 1]
    model.generation_config.eos_token_id = eos  # the default comes from the generation config
    assert generate(model, p, exit_layer=2, max_new_tokens=NEW).new_tokens.tolist() == ref[:pos + 1]
    model.generation_config.eos_token_id = None
    # the budget ends inside what one draft round would cover: 4 drafted tokens + the full model's next one
    out = generate(model, p, exit_layer=1, max_new_tokens=5, **long)
    assert out.new_tokens.tolist() == ref[:5] and out.full_forwards == 1 and out.drafted == 4
    out = generate(model, p, exit_layer=1, max_new_tokens=0)
    assert torch.equal(out.sequences, p) and out.full_forwards == 0


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_eager_attention_float64_and_one_dimensional_prompt(impl):
    model = tiny("llama", "random", impl=impl, seed=3).double()
    p = prompts(3, lengths=(7,))[0]
    ref = greedy(model, p, 25)
    out = generate(model, p[0], exit_layer=2, max_new_tokens=25, confidence_threshold=0.0, adaptive=False)
    assert isinstance(out, SpeculativeOutput) and torch.equal(out.sequences, ref)
    stats = out.stats()
    assert stats["new_tokens"] == 25 and stats["drafted"] == out.drafted and stats["tokens_per_s"] > 0


def test_bad_inputs_name_the_argument():
    model = tiny("gpt2")
    p = torch.tensor([[1, 2, 3]])
    for k in (0, LAYERS, -1, 2.0, True):
        with pytest.raises(ValueError, match="exit_layer"):
            generate(model, p, exit_layer=k)
    with pytest.raises(ValueError, match="input_ids.*batch size 1"):
        generate(model, torch.tensor([[1, 2], [3, 4]]), exit_layer=1)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), exit_layer=1)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.tensor([[0.5, 1.0]]), exit_layer=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, p, exit_layer=1, max_new_tokens=-1)
    with pytest.raises(ValueError, match="max_new_tokens=127 .* 128 positions"):  # GPT-2: 128 positions
        generate(model, p, exit_layer=1, max_new_tokens=127)
    with pytest.raises(ValueError, match="max_draft_tokens"):
        generate(model, p, exit_layer=1, max_draft_tokens=-2)
    with pytest.raises(ValueError, match="confidence_threshold"):
        generate(model, p, exit_layer=1, confidence_threshold=1.5)
    with pytest.raises(ValueError, match="model"):
        generate(torch.nn.Linear(2, 2), p, exit_layer=1)
    with pytest.raises(ValueError, match=r"input_ids must be token ids in 0\.\.63 .* got 64"):
        generate(model, torch.tensor([[1, 64]]), exit_layer=1)
    with pytest.raises(ValueError, match=r"input_ids must be token ids in 0\.\.63 .* got -1"):
        generate(model, torch.tensor([[-1, 3]]), exit_layer=1)


# ---- the command line ----------------------------------------------------------------------------------------

TINY_LM = ["model.num_hidden_layers=3", "model.hidden_size=16", "model.intermediate_size=32",
           "model.num_attention_heads=2", "model.num_key_value_heads=0", "model.context=16", "batch_size=4",
           "eval_batch_size=8", "data.val_blocks=4", "optim.warmup_steps=1", "log_every=1000", "threads=1",
           "device=cpu", "eval_depths=[1]", "steps=2", "eval_every=2"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    from stimulative.lm.train import train_lm

    root = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)
    words = ["def", "return", "self", "x", "=", "(", ")", ":", "for", "in", "if", "print"]
    text = root / "text"
    text.mkdir()
    for i in range(4):
        (text / f"f{i}.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(6)) for _ in range(30)))
    summary = train_lm(REPO / "recipes/lm_llama_st.yaml", [f"data.root={text}", f"out_dir={root / 'runs'}",
                                                           "name=st", *TINY_LM])
    return Path(summary["run_dir"])


def test_cli_generate_on_a_run_and_an_export(lm_run, tmp_path, capsys):
    assert main(["generate", str(lm_run), "--exit", "1", "--prompt", "def f(", "--max-new-tokens", "12",
                 "--compare", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    text, stats = out.split("\n---\n")
    assert text.startswith("def f(")
    assert "tokens/s" in stats and "acceptance" in stats and "tokens per full forward" in stats
    assert "median of 3 timed runs" in stats
    lines = {line.split(":")[0]: line for line in stats.splitlines()}
    for mode in ("plain greedy (model.generate)", "ours without drafts (max_draft_tokens=0)",
                 "assistant_early_exit=1 (model.generate)"):
        assert lines[mode].endswith("; identical") and "ours is " in lines[mode], (mode, stats)
    export = tmp_path / "export"
    assert main(["export", str(lm_run), "-o", str(export)]) == 0  # all 3 layers as a save_pretrained directory
    capsys.readouterr()
    assert main(["generate", str(export), "--exit", "2", "--prompt", "x = ", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("x = ") and "exit 2 of 3" in out and "acceptance" in out


def test_cli_generate_errors(lm_run, tmp_path, capsys):
    assert main(["generate", str(lm_run), "--exit", "3", "--prompt", "x"]) == 2
    assert "exit_layer must be an int in 1..2" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--exit", "1", "--prompt", "x"]) == 2
    assert "neither an LM run directory nor a transformers model directory" in capsys.readouterr().err
    assert main(["generate", str(lm_run), "--exit", "1", "--prompt", ""]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_cli_draft_vocabulary_and_measured_costs(lm_run, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("def return self x = ( ) : for in if print\n" * 20)
    assert main(["generate", str(lm_run), "--exit", "1", "--prompt", "def f(", "--max-new-tokens", "8",
                 "--draft-vocab", "20", "--draft-text", str(text), "--measure-costs", "--compare", "--repeats", "1",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "drafting pays from" in out and out.count("; identical") == 3  # greedy, no drafts, assistant_early_exit
    assert main(["generate", str(lm_run), "--exit", "1", "--prompt", "x", "--draft-vocab", "20"]) == 2
    assert "--draft-text" in capsys.readouterr().err
    assert main(["generate", str(lm_run), "--exit", "1", "--prompt", "x", "--draft-vocab", "20",
                 "--draft-text", str(tmp_path / "missing")]) == 2
    assert "--draft-text" in capsys.readouterr().err


def test_drafting_pays_where_the_expected_tokens_per_unit_of_work_beat_greedy():
    from stimulative.lm.speculative import _drafting_pays

    # one draft costing a quarter of a greedy step: 1 + a tokens for 1.25 steps' work
    assert _drafting_pays(0.5, 0.25, 16, 1.1) and not _drafting_pays(0.3, 0.25, 16, 1.1)
    assert not _drafting_pays(0.5, 0.75, 16, 1.1) and _drafting_pays(0.95, 0.75, 16, 1.1)
    assert not _drafting_pays(0.99, 0.25, 0, 1.0)  # no room for a draft
    # a verifying forward on 2 positions that costs 1.5 steps (a CPU) makes the same draft a loss
    assert not _drafting_pays(0.5, 0.25, 1, 1.1, verify=(1.0, 1.5))
    assert _drafting_pays(0.95, 0.25, 1, 1.1, verify=(1.0, 1.5))


def test_measured_costs_decide_where_drafting_pays():
    from stimulative.lm import DecodeCosts, measure_decode_costs

    model = tiny("llama", "agree")
    p = prompts(5)[2]
    ref = greedy(model, p, NEW)
    costs = measure_decode_costs(model, 1, prompt_length=8, max_positions=3, repeats=2)
    assert costs.exit_layer == 1 and len(costs.verify) == 3 and costs.draft > 0 and costs.step_ms > 0
    assert torch.equal(generate(model, p, 1, NEW, costs=costs).sequences, ref)
    # verification that costs 100 steps: no round pays, every step is plain greedy; free verification: drafts
    dear = DecodeCosts(1, draft=0.1, verify=(1.0, 100.0), step_ms=1.0)
    out = generate(model, p, 1, NEW, costs=dear, confidence_threshold=0.0)
    assert torch.equal(out.sequences, ref) and out.drafted == 0 and out.greedy_steps == NEW
    cheap = DecodeCosts(1, draft=0.1, verify=(1.0, 1.0), step_ms=1.0)
    out = generate(model, p, 1, NEW, costs=cheap, confidence_threshold=0.0)
    assert torch.equal(out.sequences, ref) and out.accepted > NEW // 2
    assert dear.break_even() == 1.0 and cheap.break_even() < 0.15
    cpu = DecodeCosts(8, draft=0.232, verify=(1.0, 1.367, 1.629, 1.64, 1.643), step_ms=61.3)  # SmolLM2, measured
    assert 0.5 < cpu.break_even() < 0.7
    assert cpu.speedup(cpu.break_even()) == pytest.approx(1.0, abs=1e-3) and cpu.speedup(0.36) < 1
    assert cpu.agreement_for(1.5) > cpu.break_even()
    free = DecodeCosts(8, draft=0.245, verify=(1.0,), step_ms=61.3)  # verification at no cost: one draft pays from 24.5%
    assert free.break_even() == pytest.approx(0.245, abs=1e-3)
    assert free.speedup(0.36) == pytest.approx(1.36 / 1.245)
    # one draft costing 0.9996 of a step pays from 99.96% agreement: needed, not "never" (1.0), as rounding made it
    edge = DecodeCosts(8, draft=0.9996, verify=(1.0,), step_ms=61.3)
    assert edge.break_even(max_draft_tokens=1) == pytest.approx(0.9996, abs=1e-6)
    assert edge.break_even(max_draft_tokens=1) < 1.0
    with pytest.raises(ValueError, match="measure_decode_costs"):  # measured for another exit
        generate(model, p, 2, NEW, costs=costs)
    with pytest.raises(ValueError, match="measure_decode_costs"):  # measured without a draft vocabulary
        generate(model, p, 1, NEW, costs=costs, draft_vocab=list(range(10)))
    with pytest.raises(ValueError, match="exit_layer"):
        measure_decode_costs(model, LAYERS)


def test_measured_costs_wait_for_a_gpu_to_finish(monkeypatch):
    """On a CUDA device the kernels run after the call returns, so each timing waits for the device (a clock read
    at the call's return would time the launches only); on a CPU nothing is waited for."""
    from stimulative.lm import speculative

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    speculative._sync(torch.device("cpu"))
    assert calls == []
    speculative._sync(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_draft_cost_counts_the_head_and_a_draft_vocabulary_lowers_it(monkeypatch):
    """A drafted token costs layers 1..k and the draft head (weights read), against all layers and the head: a
    large head makes a shallow draft dear, and a draft vocabulary of n tokens reads n of its rows."""
    from stimulative.lm import speculative

    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    stack = speculative._Stack(model)
    layer, head = stack.layer_cost[0], 4096 * 32
    assert stack.layer_cost == [layer] * 4 and layer == sum(p.numel() for p in model.model.layers[0].parameters())
    assert speculative._draft_cost(stack, 1) == pytest.approx((layer + head) / (4 * layer + head))
    seen = []
    real = speculative._draft_cost
    monkeypatch.setattr(speculative, "_draft_cost", lambda s, k: seen.append(s.draft_head_cost) or real(s, k))
    generate(model, torch.tensor([[1, 2, 3]]), exit_layer=1, max_new_tokens=2, draft_vocab=list(range(256)))
    generate(model, torch.tensor([[1, 2, 3]]), exit_layer=1, max_new_tokens=2)
    assert seen == [256 * 32, head]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_draft_vocabulary_drafts_only_its_tokens_and_keeps_the_greedy_output(family):
    model = tiny(family, "agree")
    fixed = {"max_draft_tokens": 3, "confidence_threshold": 0.0, "adaptive": False}
    for p in prompts(7):
        ref = greedy(model, p, NEW)
        plain = generate(model, p, exit_layer=1, max_new_tokens=NEW, **fixed)
        # every id, shuffled: the drafts map back to the right ids (the same drafts as without a draft vocabulary)
        shuffled = generate(model, p, exit_layer=1, max_new_tokens=NEW, draft_vocab=torch.randperm(VOCAB), **fixed)
        counts = ("rounds", "drafted", "accepted", "full_forwards", "greedy_steps")
        assert torch.equal(shuffled.sequences, ref)
        assert [getattr(shuffled, c) for c in counts] == [getattr(plain, c) for c in counts]
        assert plain.accepted > 0
        # none of the tokens greedy emits: every draft is rejected, the output is still greedy's
        emitted = set(ref[0, p.shape[1]:].tolist())
        others = [t for t in range(VOCAB) if t not in emitted]
        none = generate(model, p, exit_layer=1, max_new_tokens=NEW, draft_vocab=others, **fixed)
        assert torch.equal(none.sequences, ref) and none.drafted > 0 and none.accepted == 0


def test_a_draft_vocabulary_with_an_exit_adapter_keeps_the_greedy_output():
    from stimulative.lm.adapter import ExitAdapter

    model = tiny("llama", "agree")
    torch.manual_seed(1)
    adapter = ExitAdapter(32, 2, rank=16).eval()
    p = prompts(3)[2]
    out = generate(model, p, exit_layer=2, max_new_tokens=NEW, exit_adapter=adapter, draft_vocab=list(range(1, 40)),
                   adaptive=False, max_draft_tokens=3)
    assert torch.equal(out.sequences, greedy(model, p, NEW)) and out.drafted > 0


@pytest.mark.parametrize("bad, key", [([70], "draft_vocab"), ([1, 1], "twice"), ([], "draft_vocab"),
                                      ([0.5], "draft_vocab"), ([[1, 2]], "draft_vocab")])
def test_a_bad_draft_vocabulary_is_refused(bad, key):
    with pytest.raises(ValueError, match=key):
        generate(tiny("llama"), torch.tensor([[1, 2]]), exit_layer=1, max_new_tokens=2, draft_vocab=bad)


def test_draft_vocabulary_takes_the_most_frequent_ids_and_the_kept_ones():
    from stimulative.lm import draft_vocabulary

    ids = torch.tensor([[5, 5, 5, 7, 7, 9], [9, 3, 3, 3, 3, 1]])  # 3: 4 times, 5: 3, 7 and 9: twice, 1: once
    assert draft_vocabulary(ids, 2).tolist() == [3, 5]
    assert draft_vocabulary(ids, 3).tolist() == [3, 5, 7]  # 7 and 9 tie: the smaller id
    assert draft_vocabulary(ids, 2, keep=[0, 3]).tolist() == [0, 3, 5]
    assert draft_vocabulary(ids, 100).tolist() == [1, 3, 5, 7, 9]  # only the ids that occur
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="size"):
            draft_vocabulary(ids, bad)
    with pytest.raises(ValueError, match="token_ids"):
        draft_vocabulary(torch.tensor([-1, 2]), 2)


def save_tiny(path: Path, family: str, layers: int = 2, positions: int = 64) -> Path:
    """A random model directory without a tokenizer (the byte tokenizer: 257 ids)."""
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=257, n_embd=16, n_layer=layers, n_head=2, n_positions=positions,
                                      bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=257, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                       num_attention_heads=2, num_key_value_heads=1, bos_token_id=None,
                                       eos_token_id=None)
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return path


def test_cli_compare_on_gpt2_notes_what_assistant_early_exit_cannot_do(tmp_path, capsys):
    model = save_tiny(tmp_path / "gpt2", "gpt2")
    assert main(["generate", str(model), "--exit", "1", "--prompt", "abc", "--max-new-tokens", "6", "--compare",
                 "--repeats", "1"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("assistant_early_exit=1")]
    assert len(lines) == 1 and "skipped, transformers cannot decode this model with it (IndexError" in lines[0]
    assert "plain greedy (model.generate)" in captured.out and captured.out.count("; identical") == 2


def one_error_line(err: str) -> bool:
    """One ``stimulative generate: error: ...`` line and no traceback (transformers' progress bars aside)."""
    return "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1


def test_cli_edge_cases_are_one_line_or_work(tmp_path, capsys):
    llama = save_tiny(tmp_path / "llama", "llama")
    one = save_tiny(tmp_path / "one", "llama", layers=1)
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2", positions=16)
    capsys.readouterr()  # save_pretrained's progress bars
    assert main(["generate", str(llama), "--exit", "1", "--prompt", "ab", "--max-new-tokens", "0", "--compare"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ab\n---\n") and "0 new tokens" in out and "nothing to compare" in out
    assert main(["generate", str(one), "--exit", "1", "--prompt", "ab"]) == 2
    err = capsys.readouterr().err
    assert "at least 2 layers (this one has 1)" in err and one_error_line(err)
    # GPT-2 with 16 positions: 3 prompt bytes + 14 new tokens = 17 = n_positions + 1, as model.generate allows
    assert main(["generate", str(gpt2), "--exit", "1", "--prompt", "abc", "--max-new-tokens", "14", "--compare",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "14 new tokens" in out and "plain greedy (model.generate): 14 tokens" in out
    assert main(["generate", str(gpt2), "--exit", "1", "--prompt", "abc", "--max-new-tokens", "15"]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's 16 positions (at most 14 new tokens)" in err and one_error_line(err)
    assert main(["generate", str(llama), "--exit", "1", "--prompt", "ab", "--compare", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_cli_compare_shows_the_first_differing_position(tmp_path, capsys, monkeypatch):
    from stimulative.commands import generate as command

    llama = save_tiny(tmp_path / "llama", "llama")
    hf = command._hf_generate

    def altered(model, ids, new, **extra):  # plain greedy "returns" another token at new position 2
        tokens = hf(model, ids, new, **extra)
        return tokens if extra else tokens[:2] + [(tokens[2] + 1) % 257] + tokens[3:]

    monkeypatch.setattr(command, "_hf_generate", altered)
    assert main(["generate", str(llama), "--exit", "1", "--prompt", "ab", "--max-new-tokens", "5", "--compare",
                 "--repeats", "1"]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("plain greedy"))
    assert "DIFFERS at new token 2: ours " in line and "(5 vs 5 new tokens)" in line
    assert command.first_difference([1, 2], [1, 2]) == "identical"
    assert command.first_difference([1, 2], [1, 2, 3]).startswith("DIFFERS at new token 2: ours end, theirs 3")


def test_cli_generate_with_an_exit_adapter(tmp_path, capsys):
    """--adapter FILE drafts through an exit adapter: the output is still plain greedy's, assistant_early_exit is
    skipped with a note; a wrong layer or a file that is no adapter is one error line."""
    from stimulative.lm.adapter import ExitAdapter, save_adapter

    llama = save_tiny(tmp_path / "llama", "llama")
    capsys.readouterr()
    adapter = ExitAdapter(16, layer=1, rank=8)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    path = save_adapter(adapter, tmp_path / "exit1.pt")
    assert main(["generate", str(llama), "--exit", "1", "--adapter", str(path), "--prompt", "abc",
                 "--max-new-tokens", "8", "--compare", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain greedy (model.generate): 8 tokens" in out and out.count("; identical") == 2
    assert "assistant_early_exit=1 (model.generate): skipped" in out
    assert main(["generate", str(llama), "--exit", "2", "--adapter", str(path), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err
    assert "trained on layer 1" in err and one_error_line(err)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["generate", str(llama), "--exit", "1", "--adapter", str(tmp_path / "junk.pt"), "--prompt", "a"]) == 2
    assert one_error_line(capsys.readouterr().err)
