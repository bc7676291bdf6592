"""benchmarks/lm_decode.py (the decoding benchmark of bench_lm.py and bench_decode.py): on a tiny trained LM run,
self-speculative decoding equals plain greedy and the acceptance is counted."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from scriptload import benchmark_script

transformers = pytest.importorskip("transformers")

from stimulative.lm.data import load_lm_data  # noqa: E402
from stimulative.lm.export import export_lm  # noqa: E402
from stimulative.lm.model import load_lm  # noqa: E402
from stimulative.lm.train import train_lm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.num_hidden_layers=3", "model.hidden_size=16", "model.intermediate_size=32",
        "model.num_attention_heads=2", "model.num_key_value_heads=0", "model.context=16", "batch_size=4",
        "eval_batch_size=8", "data.val_blocks=6", "optim.warmup_steps=1", "log_every=1000", "threads=1",
        "device=cpu", "eval_depths=[1,2]", "steps=4", "eval_every=4"]
_decode = benchmark_script("lm_decode")
count_acceptance, decode_benchmark, prompts_from_tokens = (_decode.count_acceptance, _decode.decode_benchmark,
                                                           _decode.prompts_from_tokens)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-layer ST run of a few steps on a small text folder."""
    tmp = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)
    words = ["def", "return", "self", "x", "=", "(", ")", ":", "for", "in", "if", "else", "print", "value", "1"]
    (tmp / "text").mkdir()
    for i in range(6):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(40)]
        (tmp / "text" / f"f{i}.txt").write_text("\n".join(lines) + "\n")
    return train_lm(REPO / "recipes/lm_llama_st.yaml", [f"data.root={tmp / 'text'}", f"out_dir={tmp / 'runs'}",
                                                        "name=st", *TINY])["run_dir"]


def test_speculative_decoding_of_a_trained_run_equals_greedy(run, tmp_path):
    lm = load_lm(run)
    prompts = prompts_from_tokens(load_lm_data(lm.config, train=False).val, 2, 6)
    result = decode_benchmark(lm.model, prompts, exits=[1, 2], max_new_tokens=10, warmup=False)
    assert result["greedy"]["tokens"] > 0
    for k in (1, 2):
        r = result[f"exit_{k}"]
        assert r["equal_greedy"] and r["tokens"] == result["greedy"]["tokens"]
        assert r["rounds"] > 0 and 0 <= r["accepted"] <= r["drafted"] and 0 <= r["acceptance"] <= 1
    # the exported prefix as an assistant model gives the plain greedy output too, and counts the same way
    export_lm(run, 1, tmp_path / "d1")
    draft = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "d1").eval()
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": lm.model.generation_config.pad_token_id}
    p = prompts[0].reshape(1, -1)
    with count_acceptance() as counts:
        assisted = lm.model.generate(p, assistant_model=draft, **kwargs)
    assert torch.equal(assisted, lm.model.generate(p, **kwargs)) and counts["rounds"] > 0
