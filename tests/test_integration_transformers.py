"""Hugging Face transformers integration: elastic depth, extraction to save_pretrained, the Trainer, the docs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import stimulative as st  # noqa: E402
from stimulative import hf as st_hf  # noqa: E402
from stimulative.integrations import transformers as sth  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "transformers.md"


# --------------------------------------------------------------------------------------------------------------
# Tiny models of every supported family: (model, input, a smaller depth config)
# --------------------------------------------------------------------------------------------------------------

def _resnet():
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[2, 3],
                                    layer_type="basic", num_labels=5)
    return transformers.ResNetForImageClassification(cfg), torch.randn(2, 3, 32, 32), [1, 2]


def _convnext():
    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[2, 3],
                                      num_labels=5, layer_scale_init_value=1.0)  # default 1e-6: blocks ~ identity
    return transformers.ConvNextForImageClassification(cfg), torch.randn(2, 3, 32, 32), [1, 2]


def _vit():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=5)
    return transformers.ViTForImageClassification(cfg), torch.randn(2, 3, 16, 16), [2]


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg), torch.randint(0, 64, (2, 9)), [2]


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=64, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg), torch.randint(0, 64, (2, 9)), [2]


MODELS = {"resnet": _resnet, "convnext": _convnext, "vit": _vit, "llama": _llama, "gpt2": _gpt2}


def _build(name):
    torch.manual_seed(0)
    model, x, depths = MODELS[name]()
    return model.eval(), x, depths


def _logits(model, x):
    kwargs = {"use_cache": False} if "input_ids" == model.main_input_name else {}
    with torch.no_grad():
        return model(x, **kwargs).logits


def _hand_truncated(model, keep_per_stage):
    """A deep copy with only the given layers of every stage, cut by hand (ModuleList/Sequential slicing)."""
    clone = copy.deepcopy(model)
    stages = st_hf.find_layer_stages(clone)
    for stage, keep in zip(stages, keep_per_stage):
        parent_name, _, local = stage.path.rpartition(".")
        parent = clone.get_submodule(parent_name)
        old = getattr(parent, local)
        kept = [old[i] for i in keep]
        setattr(parent, local, nn.Sequential(*kept) if isinstance(old, nn.Sequential) else nn.ModuleList(kept))
        if stage.config_field == "num_hidden_layers":
            clone.config.num_hidden_layers = len(keep)
        else:
            clone.config.depths[int(stage.config_field[7:-1])] = len(keep)
    return clone


def test_supported_model_types_are_all_tested():
    assert set(MODELS) == set(st_hf.SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("name", list(MODELS))
def test_layers_found(name):
    model, _, _ = _build(name)
    stages = st_hf.find_layer_stages(model)
    cfg = model.config
    expected = list(cfg.depths) if hasattr(cfg, "depths") and name in ("resnet", "convnext") \
        else [cfg.num_hidden_layers]
    assert [s.num_layers for s in stages] == expected
    ed = st_hf.elastic_depth(model)
    assert ed.full_depths == expected
    if name == "resnet":  # the first layer of stage 2 has a projection shortcut: never skipped
        assert ed.stages[1].skippable[0] is False and ed.min_depths == [1, 1]


@pytest.mark.parametrize("name", list(MODELS))
def test_depth_forward_equals_hand_truncated(name):
    model, x, depths = _build(name)
    reference = _hand_truncated(model, [range(d) for d in depths])
    full = _logits(model, x)
    ed = st_hf.elastic_depth(model)
    kwargs = {"use_cache": False} if name in ("llama", "gpt2") else {}
    with torch.no_grad(), ed.depth(depths):
        sub = ed.model(x, **kwargs)
    assert torch.equal(sub, _logits(reference, x))
    assert not torch.allclose(sub, full)  # the cut layers did something
    with torch.no_grad():
        assert torch.equal(ed.model(x, **kwargs), full)  # the context restored the full network


@pytest.mark.parametrize("name", list(MODELS))
def test_extract_save_pretrained_from_pretrained(name, tmp_path):
    model, x, depths = _build(name)
    ed = st_hf.elastic_depth(model)
    with torch.no_grad(), ed.depth(depths):
        expected = _logits(model, x)
    small = st_hf.extract_pretrained(ed, depths)
    assert type(small) is type(model)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert not any(hasattr(type(m), "_st_original_class") for m in small.modules())  # plain hf modules
    assert torch.equal(_logits(small, x), expected)
    small.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    if hasattr(loaded.config, "depths") and name in ("resnet", "convnext"):
        assert list(loaded.config.depths) == depths
    else:
        assert loaded.config.num_hidden_layers == depths[0]
    assert torch.equal(_logits(loaded.eval(), x), expected)


def test_extract_from_plain_model_leaves_it_plain():
    model, x, _ = _build("gpt2")
    small = st_hf.extract_pretrained(model, [1])
    assert small.config.n_layer == 1
    assert not any(hasattr(type(m), "_st_original_class") for m in model.modules())
    assert torch.equal(_logits(small, x), _logits(_hand_truncated(model, [[0]]), x))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_every_other_layer(name, tmp_path):
    """SortedNet/LayerDrop pattern: layers 0 and 2 of 3-4, then the final norm and the LM head."""
    model, x, _ = _build(name)
    ed = st_hf.elastic_depth(model)
    config = st_hf.keep_layers(ed, [0, 2])
    with torch.no_grad(), ed.depth(config):
        sub = ed.model(x, use_cache=False)
    assert torch.equal(sub, _logits(_hand_truncated(model, [[0, 2]]), x))
    small = st_hf.extract_pretrained(ed, config)
    small.save_pretrained(tmp_path)
    assert torch.equal(_logits(type(model).from_pretrained(tmp_path).eval(), x), sub)


def test_adapter_keeps_tuple_outputs():
    """Layers returning a tuple (older transformers) get a tuple back when skipped."""

    class TupleLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, hidden_states, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
            return hidden_states + self.lin(hidden_states), hidden_states.sum()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([TupleLayer() for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x, attention_mask=None)[0]
            return x

    net = Net()
    x = torch.randn(2, 4)
    ed = st_hf.HFElasticDepth(net, stages=["layers"])
    with torch.no_grad(), ed.depth([1]):
        out = net(x)
        assert isinstance(net.layers[2](x), tuple)
    with torch.no_grad():
        assert torch.equal(out, net.layers[0](x)[0])
    assert type(ed.remove().layers[0]) is TupleLayer


def test_stimulative_step_through_logits_wrapper():
    model, x, _ = _build("vit")
    ed = st_hf.elastic_depth(model.train())
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2, kl_norm="layer",
                              min_input_scale=1.0, seed=0)
    losses = step(x, torch.tensor([0, 3]))
    assert set(losses) == {"loss", "main", "subnet"} and losses["subnet"] > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


# --------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------

ST_OPTIONS = {"num_subnets": 2, "kl_norm": "layer", "min_input_scale": 0.5, "seed": 3}  # ST++ options


def test_trainer_equals_plain_step_loop(tmp_path):
    torch.manual_seed(0)
    model, _, _ = _resnet()
    initial = copy.deepcopy(model)
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 5} for i in range(8)]
    seen: list[dict] = []

    class Recording(sth.StimulativeTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append({k: v.clone() for k, v in inputs.items()})
            return super().training_step(model, inputs, num_items_in_batch)

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=0.1, optim="sgd", optim_args="momentum=0.9", lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to="none", save_strategy="no", seed=7,
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Recording(model, args, train_dataset=data, st_options=ST_OPTIONS)
    trainer.train()
    assert len(seen) == 4
    assert any(r.get("st_subnet", 0) > 0 for r in trainer.state.log_history)

    # the plain loop: same initial weights, same micro-batches, same seeds, loss / micro-batches per step
    ed = st_hf.elastic_depth(initial)
    space = st.SampleSpace.ordered(ed.full_depths, ed.min_depths, seed=7)
    step = st.StimulativeStep(ed, space, **ST_OPTIONS, backward=lambda loss: (loss / 2).backward())
    opt = torch.optim.SGD(initial.parameters(), lr=0.1, momentum=0.9)
    initial.train()
    for i, batch in enumerate(seen):
        step(batch["pixel_values"], batch["labels"])
        if i % 2 == 1:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert trainer.st_step.last_sizes == step.last_sizes and trainer.st_step.last_configs == step.last_configs
    for (name, a), b in zip(model.named_parameters(), initial.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), b in zip(model.named_buffers(), initial.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert not torch.equal(model.resnet.embedder.embedder.convolution.weight,
                           _resnet()[0].resnet.embedder.embedder.convolution.weight)


# --------------------------------------------------------------------------------------------------------------
# Docs
# --------------------------------------------------------------------------------------------------------------

def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_first_snippet_runs(tmp_path, monkeypatch):
    blocks = _python_blocks(DOCS.read_text())
    assert blocks, f"no python block in {DOCS}"
    assert len(blocks[0].strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)
    saved = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert saved and (saved[0] / "config.json").exists()


@pytest.mark.parametrize("index", [1, 3])
def test_docs_other_snippets_run(index, tmp_path, monkeypatch):
    """The Trainer and the language-model examples (block 2, the causal-LM Trainer on a checkpoint directory,
    runs in tests/test_lm_pretrained.py)."""
    blocks = _python_blocks(DOCS.read_text())
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[index], str(DOCS), "exec"), namespace)
    if index == 3:
        assert 4 < namespace["out"].shape[1] <= 4 + 8
