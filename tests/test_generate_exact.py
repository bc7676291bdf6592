"""stimulative.lm.generate decodes exactly what it was verified on and refuses the rest (issue 32): every supported
model feature and generation_config setting against model.generate token for token; every unsupported one raises
one line naming it; attention masks and pad ids as model.generate treats them; the runtime cache check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_generate import LAYERS, VOCAB, greedy, prompts, tiny  # noqa: E402

import stimulative.lm.speculative as speculative  # noqa: E402
from stimulative.lm.speculative import SUPPORTED, UnsupportedError, generate  # noqa: E402

torch.set_num_threads(1)
NEW = 24
DRAFTS = ({}, {"max_draft_tokens": 4, "confidence_threshold": 0.0, "adaptive": False})


def assert_exact(model, p, new=NEW, ref=None, **kwargs):
    """Ours equals ``ref`` (default: model.generate with an all-ones mask) at every exit, with and without
    forced drafting; returns the drafted count (so a caller can check the drafts were really verified)."""
    ref = greedy(model, p, new) if ref is None else ref
    drafted = 0
    for k in range(1, LAYERS):
        for draft in DRAFTS:
            out = generate(model, p, exit_layer=k, max_new_tokens=new, **draft, **kwargs)
            assert torch.equal(out.sequences, ref), (k, draft, out.sequences.tolist(), ref.tolist())
            drafted += out.drafted
    return drafted


def llama_with(seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, **config)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


# ---- model features: each supported one equals model.generate, each other one is refused -------------------------

ROPES = {"default": {"rope_type": "default", "rope_theta": 10000.0},
         "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
         "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16, "rope_theta": 10000.0},
         "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}}


@pytest.mark.parametrize("rope", SUPPORTED["rope types (Llama)"])
def test_supported_rope_types_equal_greedy(rope):
    model = llama_with(rope_parameters=ROPES[rope])
    assert model.model.rotary_emb.rope_type == rope
    # prompt + new tokens go past original_max_position_embeddings (16), where llama3/yarn rescale frequencies
    for p in prompts(5, lengths=(3, 11)):
        assert assert_exact(model, p) > 0


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
                                  {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
                                   "original_max_position_embeddings": 16, "rope_theta": 10000.0}])
def test_rope_types_that_depend_on_the_call_length_are_refused(rope):
    model = llama_with(rope_parameters=rope)
    with pytest.raises(UnsupportedError, match=f"rope type '{rope['rope_type']}'.*assistant_early_exit") as e:
        generate(model, torch.tensor([[1, 2, 3]]), exit_layer=2)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("impl", SUPPORTED["attention implementations"])
def test_supported_attention_implementations_equal_greedy(family, impl):
    model = tiny(family, "agree", impl=impl, seed=4)
    assert model.config._attn_implementation == impl
    for p in prompts(6, lengths=(2, 9)):
        assert assert_exact(model, p) > 0


@pytest.mark.parametrize("option", SUPPORTED["GPT-2 attention options"])
def test_supported_gpt2_attention_options_equal_greedy(option):
    torch.manual_seed(1)
    value = option != "scale_attn_weights"  # scale_attn_weights is on by default: the option is turning it off
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=2, n_positions=128,
                                  bos_token_id=None, eos_token_id=None, attn_implementation="eager", **{option: value})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.generation_config.eos_token_id = None
    assert getattr(model.config, option) is value
    for p in prompts(7, lengths=(4, 13)):
        assert_exact(model, p)


def test_other_model_classes_are_refused_by_name():
    small = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1}

    class MyLlama(transformers.LlamaForCausalLM):  # same layout, another forward could be anything
        pass

    models = {"MistralForCausalLM": transformers.MistralForCausalLM(transformers.MistralConfig(**small,
                                                                                              sliding_window=4)),
              "GraniteForCausalLM": transformers.GraniteForCausalLM(transformers.GraniteConfig(
                  **small, embedding_multiplier=12.0, residual_multiplier=0.2, logits_scaling=4.0)),
              "MyLlama": MyLlama(transformers.LlamaConfig(**small))}
    for name, model in models.items():
        with pytest.raises(UnsupportedError, match=f"model class {name} .*verified: LlamaForCausalLM, "
                                                   "GPT2LMHeadModel.*assistant_early_exit") as e:
            generate(model.eval(), torch.tensor([[1, 2, 3]]), exit_layer=1)
        assert "\n" not in str(e.value)


def test_refused_config_features_are_named():
    p = torch.tensor([[1, 2, 3]])
    model = llama_with()
    model.config.num_hidden_layers = LAYERS - 1  # the model's forward would run 3 of its 4 layers
    with pytest.raises(UnsupportedError, match="num_hidden_layers=3 with 4 layers"):
        generate(model, p, exit_layer=1)
    model = llama_with()
    model.config.sliding_window = 4
    with pytest.raises(UnsupportedError, match="sliding_window=4"):
        generate(model, p, exit_layer=1)
    model = llama_with()
    model.config.layer_types = ["full_attention", "sliding_attention"] * 2
    with pytest.raises(UnsupportedError, match="layer type 'sliding_attention'"):
        generate(model, p, exit_layer=1)
    model = llama_with()
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedError, match="attention implementation 'flex_attention'.*eager, sdpa"):
        generate(model, p, exit_layer=1)
    torch.manual_seed(0)
    one = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedError, match="at least 2 layers .*has 1"):
        generate(one, p, exit_layer=1)


def test_a_cache_the_layers_do_not_fill_is_an_error(monkeypatch):
    """What an older transformers does (its layers take the cache under another name and leave ours empty)."""
    from transformers import DynamicCache

    run = speculative._Stack.run
    monkeypatch.setattr(speculative._Stack, "run", lambda self, h, layers, start, cache: run(self, h, layers, start,
                                                                                          DynamicCache()))
    with pytest.raises(UnsupportedError, match="KV cache holds 0 positions after a forward over 3 .*tested: "
                                               "transformers>=5.24,<5.26"):
        generate(llama_with(), torch.tensor([[1, 2, 3]]), exit_layer=2, max_new_tokens=5)


# ---- generation_config: settings that change greedy output are applied as model.generate applies them ----------

def _setting(key: str, ref: list[int]):
    """A value of ``key`` that changes this model's greedy output ``ref`` (the new tokens), and the EOS it needs."""
    first_new = next(i for i in range(3, len(ref)) if ref[i] not in ref[:i])  # a token first seen at step i
    eos = ref[first_new]
    return {"repetition_penalty": (1.8, None), "no_repeat_ngram_size": (1, None),
            "bad_words_ids": ([[ref[0], ref[1]], [ref[4]]], None),
            "min_length": (len(ref) - 2 + 5, eos),  # 5 = the prompt's length: total length counts it
            "min_new_tokens": (first_new + 3, eos), "suppress_tokens": ([ref[0], ref[2]], None),
            "begin_suppress_tokens": ([ref[0]], None), "sequence_bias": ({(ref[1],): -20.0}, None),
            "forced_bos_token_id": (ref[3], None), "forced_eos_token_id": (ref[2], None),
            "exponential_decay_length_penalty": ((2, 3.0), eos),
            "remove_invalid_values": (True, None), "renormalize_logits": (True, None)}[key]


@pytest.mark.parametrize("key", SUPPORTED["generation_config settings"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generation_config_settings_are_applied_exactly(family, key):
    model = tiny(family, "agree", seed=2)
    if family == "gpt2":  # an untied head: a random GPT-2 with tied embeddings repeats its last token forever
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(2)))
    p = prompts(8, lengths=(1 if key == "forced_bos_token_id" else 5,))[0]  # forced BOS acts on a 1-token prompt
    base = greedy(model, p, NEW)
    value, eos = _setting(key, base[0, p.shape[1]:].tolist())
    setattr(model.generation_config, key, value)
    model.generation_config.eos_token_id = eos
    ref = model.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
    if key not in ("remove_invalid_values", "renormalize_logits"):  # these two keep the argmax here
        assert not torch.equal(ref, base), f"{key}={value!r} does not change the output: the test would be void"
    assert assert_exact(model, p, ref=ref) > 0


@pytest.mark.parametrize("key, value", [("num_beams", 2), ("guidance_scale", 1.5), ("max_time", 5.0),
                                        ("encoder_repetition_penalty", 1.3), ("penalty_alpha", 0.6)])
def test_generation_config_settings_not_verified_are_refused_by_name(key, value):
    model = tiny("llama")
    setattr(model.generation_config, key, value)
    with pytest.raises(UnsupportedError, match=f"generation_config.{key}={value!r}") as e:
        generate(model, torch.tensor([[1, 2, 3]]), exit_layer=1)
    assert "\n" not in str(e.value)


# ---- attention masks and the pad id ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padding_and_an_inferred_mask_equal_generate(family):
    model = tiny(family, "agree", seed=5)  # pad id 0, no EOS
    for p in prompts(9, lengths=(4, 10)):
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), p], 1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(p)], 1)
        ref = model.generate(padded, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
        assert torch.equal(ref[:, 3:], greedy(model, p, NEW))  # the padding does not change the output
        assert_exact(model, padded, ref=ref, attention_mask=mask)
        # no mask: model.generate infers it from the pad id; ours too
        assert torch.equal(model.generate(padded, do_sample=False, max_new_tokens=NEW), ref)
        assert_exact(model, padded, ref=ref)
        out = generate(model, padded[0], 2, NEW, attention_mask=mask[0])  # 1-D prompt and mask
        assert torch.equal(out.sequences, ref) and out.prompt_length == padded.shape[1]
        assert torch.equal(out.new_tokens, ref[0, padded.shape[1]:])
    # padding positions may hold any id where the mask says so
    filler = padded.clone()
    filler[0, :3] = 7
    ref = model.generate(filler, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    assert_exact(model, filler, ref=ref, attention_mask=mask)
    # a processor that reads the prompt (repetition penalty skips the padding) sees it as model.generate does
    model.generation_config.repetition_penalty = 1.5
    ref = model.generate(padded, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    assert_exact(model, padded, ref=ref, attention_mask=mask)


def test_a_pad_id_inside_the_prompt_is_refused_or_kept_as_a_token():
    model = tiny("llama", "agree", seed=5)
    p = torch.tensor([[5, 9, 0, 11, 3]])  # pad id 0 after a token: model.generate(p) would mask it
    with pytest.raises(ValueError, match="pad token id 0 .*position 2 .*attention_mask=torch.ones_like") as e:
        generate(model, p, exit_layer=2)
    assert "\n" not in str(e.value)
    assert_exact(model, p, attention_mask=torch.ones_like(p))  # an explicit mask keeps it as a token
    # pad id == EOS id: model.generate infers no mask, nor do we
    model.generation_config.eos_token_id = 0
    ref = model.generate(p, do_sample=False, max_new_tokens=NEW)
    assert_exact(model, p, ref=ref)


def test_bad_attention_masks_are_one_line_errors():
    model = tiny("gpt2")
    p = torch.tensor([[1, 2, 3, 4]])
    for mask, match in (([[1, 1, 1]], "shape"), ([[1, 2, 1, 1]], "0 .* and 1"), ([[0.0, 1.0, 1.0, 1.0]], "0 .* and 1"),
                        ([[1, 0, 1, 1]], "position 1 is masked after a prompt token"),
                        ([[0, 0, 0, 0]], "every position is padding")):
        with pytest.raises(ValueError, match=match) as e:
            generate(model, p, exit_layer=1, attention_mask=torch.tensor(mask))
        assert "\n" not in str(e.value)


# ---- arguments and the model's state ----------------------------------------------------------------------------

def test_exit_as_numpy_or_0d_tensor_and_the_model_mode_is_restored():
    model = tiny("llama", "agree")
    p = prompts(10, lengths=(6,))[0]
    ref = greedy(model, p, NEW)
    for k in (np.int64(2), np.int32(2), torch.tensor(2)):
        assert torch.equal(generate(model, p, exit_layer=k, max_new_tokens=NEW).sequences, ref), type(k)
    for bad in (np.float64(2.0), torch.tensor(2.0), torch.tensor(True), np.bool_(True)):
        with pytest.raises(ValueError, match="exit_layer"):
            generate(model, p, exit_layer=bad)
    model.train()
    assert torch.equal(generate(model, p, exit_layer=1, max_new_tokens=NEW).sequences, ref)  # decoded in eval mode
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    generate(model, p, exit_layer=1, max_new_tokens=3)
    assert not any(m.training for m in model.modules())


def test_gpt2_accepts_n_positions_plus_one_tokens_like_generate():
    model = tiny("gpt2", "agree")  # 128 positions
    p = prompts(11, lengths=(8,))[0]
    ref = greedy(model, p, 121)  # 8 + 121 = 129: the last new token is never fed to the model
    assert ref.shape[1] == 129
    assert_exact(model, p, new=121, ref=ref)
    with pytest.raises(IndexError):  # transformers: one more is an error inside torch
        greedy(model, p, 122)
    with pytest.raises(ValueError, match="max_new_tokens=122 with a 8-token prompt exceeds .*at most 121 new"):
        generate(model, p, exit_layer=1, max_new_tokens=122)
