"""Continued pre-training of a ``save_pretrained`` checkpoint with ST (issue 20, item 4).

``train_lm`` with ``model.pretrained`` and ``sth.StimulativeTrainer`` on a causal LM give the losses of a
hand-written ``StimulativeStep`` + AdamW loop on the same batches; the run resumes, reloads without the original
directory, exports and generates; bad inputs are one clear error naming the key.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import stimulative as st  # noqa: E402
from stimulative import hf as st_hf  # noqa: E402
from stimulative.core.tokens import TokenLogits, next_token_targets  # noqa: E402
from stimulative.integrations import transformers as sth  # noqa: E402
from stimulative.io import read_jsonl  # noqa: E402
from stimulative.lm.config import ConfigError, load_lm_config  # noqa: E402
from stimulative.lm.export import export_lm  # noqa: E402
from stimulative.lm.model import load_lm  # noqa: E402
from stimulative.lm.train import HF_CONFIG_DIR, load_lm_data, resolve_pretrained, train_lm  # noqa: E402

torch.set_num_threads(1)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations" / "transformers.md"
STEPS, BATCH, SEED, LR, WD, CLIP = 3, 4, 0, 1e-3, 0.1, 1.0
ST_ARGS = ["st.num_subnets=2", "st.kl_norm=layer"]  # ST options of all three paths (step seed = SEED + 1)
WORDS = ["def", "return", "self", "x", "=", "(", ")", ":", "for", "in", "if", "else", "print", "value", "1"]


def text_folder(root: Path, files: int = 6) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(40)]
        (root / f"f{i}.txt").write_text("\n".join(lines) + "\n")
    return root


def llama_dir(root: Path) -> Path:
    """A tiny random byte-vocabulary Llama, saved without a tokenizer."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        max_position_embeddings=64, bos_token_id=256, eos_token_id=256, pad_token_id=256))
    model.save_pretrained(root)
    return root


def bpe_tokenizer(texts: Path, vocab_size: int = 300):
    """A small byte-level BPE tokenizer trained on ``texts`` (nothing downloaded)."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([p.read_text() for p in sorted(texts.iterdir())], vocab_size=vocab_size,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def gpt2_dir(root: Path, tokenizer=None, vocab_size: int | None = None) -> Path:
    """A tiny random GPT-2 (no dropout), saved with ``tokenizer`` (if any) next to it."""
    torch.manual_seed(1)
    vocab = vocab_size or len(tokenizer)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=4, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(root)
    if tokenizer is not None:
        tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    text = text_folder(root / "text")
    return {"text": text, "llama": llama_dir(root / "llama"),
            "gpt2": gpt2_dir(root / "gpt2", bpe_tokenizer(text)),
            "gpt2_no_tok": gpt2_dir(root / "gpt2_no_tok", vocab_size=300)}


def _args(ckpt: Path, text: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"model.pretrained={ckpt}", f"data.root={text}", f"out_dir={out}", f"name={name}", "model.context=16",
            f"batch_size={BATCH}", "eval_batch_size=8", "data.val_blocks=4", f"steps={STEPS}", "eval_every=1",
            "log_every=1000", "threads=1", "device=cpu", "eval_depths=[2]", f"seed={SEED}", f"optim.lr={LR}",
            "optim.betas=[0.9,0.95]", f"optim.weight_decay={WD}", "optim.schedule=constant", "optim.warmup_steps=0",
            f"optim.clip_grad={CLIP}", *ST_ARGS, *extra]


def hand_loop(ckpt: Path, batches: list[torch.Tensor]) -> tuple[list[dict[str, float]], torch.nn.Module]:
    """The project's own loop: ``StimulativeStep`` (prefix exits) + AdamW + clipping on ``batches``."""
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True).float().train()
    ed = st_hf.elastic_depth(model)
    tok = TokenLogits(model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, ed.min_depths, seed=SEED), num_subnets=2,
                              kl_norm="layer", model=tok, exits=st_hf.prefix_exits(ed, rows=tok.select_rows), seed=SEED + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=LR,
                            betas=(0.9, 0.95))
    history = []
    for ids in batches:
        history.append(step(ids, next_token_targets(ids)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
    ed.remove()
    return history, model


class SequentialTrainer(sth.StimulativeTrainer):
    """The batches in dataset order (the Trainer shuffles by default)."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def trainer_losses(ckpt: Path, batches: list[torch.Tensor], out: Path) -> tuple[list[dict[str, float]], object]:
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True).float()
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row)} for ids in batches for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=len(batches), learning_rate=LR,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, weight_decay=WD, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=CLIP, use_cpu=True, report_to="none", save_strategy="no", seed=SEED,
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    trainer = SequentialTrainer(model, args, train_dataset=data, st_options={"num_subnets": 2, "kl_norm": "layer",
                                                                             "seed": SEED + 1})
    assert trainer.task == "causal_lm" and trainer.input_key == "input_ids"
    trainer.train()
    logs = [r for r in trainer.state.log_history if "st_main" in r]
    return [{"loss": r["loss"], "main": r["st_main"], "subnet": r["st_subnet"]} for r in logs], trainer


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_train_lm_and_trainer_equal_the_hand_loop(family, checkpoints, tmp_path):
    ckpt, text = checkpoints[family], checkpoints["text"]
    args = _args(ckpt, text, tmp_path / "runs", family)
    summary = train_lm(None, args)
    run = Path(summary["run_dir"])
    records = read_jsonl(run / "metrics.jsonl")
    ours = [{"loss": r["train_loss"], "main": r["train_loss_main"], "subnet": r["train_loss_subnet"]}
            for r in records]

    cfg = resolve_pretrained(load_lm_config(None, args))
    assert cfg.model.family == family and cfg.model.num_hidden_layers == 4 and cfg.model.hidden_size == 32
    if family == "gpt2":  # data.tokenizer=byte (the default) + tokenizer files in the checkpoint: its tokenizer
        assert cfg.data.tokenizer == str(ckpt.resolve())
    batches = [load_lm_data(cfg).train_batch(i, BATCH, SEED) for i in range(STEPS)]
    loop, loop_model = hand_loop(ckpt, batches)
    hf, trainer = trainer_losses(ckpt, batches, tmp_path / "hf")
    assert len(ours) == len(loop) == len(hf) == STEPS
    for i, (a, b, c) in enumerate(zip(ours, loop, hf)):
        for key in ("loss", "main", "subnet"):
            assert abs(a[key] - b[key]) < 1e-5 and abs(c[key] - b[key]) < 1e-5, (i, key, a, b, c)
    assert any(r["subnet"] > 0 for r in loop)  # sub-networks trained (a sampled full depth adds 0)

    # the run's weights are the loop's; load_lm rebuilds it from RUN/hf_config without the original directory
    assert (run / HF_CONFIG_DIR / "config.json").is_file()
    moved = shutil.move(str(ckpt), str(ckpt) + "_away")
    try:
        lm = load_lm(run)
        if family == "gpt2":  # its tokenizer directory is gone too: the run's copy (validation data still reads)
            assert lm.config.data.tokenizer == str(run / HF_CONFIG_DIR)
            assert len(load_lm_data(lm.config, train=False).val) > 0
    finally:
        shutil.move(moved, str(ckpt))
    assert type(lm.model).__name__ == type(loop_model).__name__ and lm.config.model.pretrained == str(ckpt.resolve())
    for name, value in loop_model.state_dict().items():
        assert torch.allclose(lm.model.state_dict()[name], value, atol=1e-5), name
    for name, value in trainer.model.state_dict().items():
        assert torch.allclose(lm.model.state_dict()[name], value, atol=1e-5), name

    # export: the depth-2 prefix as a plain save_pretrained directory that from_pretrained reloads
    info = export_lm(run, 2, tmp_path / "d2")
    small = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "d2", local_files_only=True).eval()
    assert small.config.num_hidden_layers == 2 and info["depth"] == 2
    assert ((tmp_path / "d2" / "tokenizer_config.json").is_file()) == (family == "gpt2")
    ed = st_hf.elastic_depth(lm.model)
    with torch.no_grad(), ed.depth([2]):
        assert torch.allclose(small(batches[0]).logits, lm.model(batches[0]).logits, atol=1e-5)
    ed.remove()


def test_resume_and_generate(checkpoints, tmp_path):
    ckpt, text = checkpoints["llama"], checkpoints["text"]
    full = train_lm(None, _args(ckpt, text, tmp_path, "full"))
    part = train_lm(None, _args(ckpt, text, tmp_path, "part", "max_steps=2"))
    assert part["step"] == 2
    resumed = train_lm(None, _args(ckpt, text, tmp_path, "part", "resume=auto"))
    assert resumed["step"] == STEPS and resumed["final"]["val_loss"] == full["final"]["val_loss"]
    a = torch.load(full["checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())

    from stimulative.cli import main

    assert main(["generate", resumed["run_dir"], "--exit", "2", "--prompt", "def ", "--max-new-tokens", "4"]) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_resume_after_the_pretrained_directory_is_gone(family, checkpoints, tmp_path):
    """The run keeps a copy of the checkpoint's config and tokenizer (RUN/hf_config): a resume needs neither the
    original directory nor its weights (they are in last.pt), and ends where an uninterrupted run ends."""
    moved = tmp_path / "moved"
    shutil.copytree(checkpoints[family], moved)
    full = train_lm(None, _args(checkpoints[family], checkpoints["text"], tmp_path, "full"))
    train_lm(None, _args(moved, checkpoints["text"], tmp_path, "part", "max_steps=2"))
    shutil.rmtree(moved)
    with pytest.raises(ConfigError, match="model.pretrained"):  # a new run still needs the directory
        train_lm(None, _args(moved, checkpoints["text"], tmp_path, "other"))
    resumed = train_lm(None, _args(moved, checkpoints["text"], tmp_path, "part", "resume=auto"))
    assert resumed["step"] == STEPS and resumed["final"]["val_loss"] == full["final"]["val_loss"]
    a = torch.load(full["checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("extra, key", [
    (["model.context=64"], "model.context"),              # 65 positions > max_position_embeddings=64
    (["model.hidden_size=64"], "model.hidden_size"),      # not the checkpoint's size
    (["model.family=gpt2"], "model.family"),
])
def test_bad_sizes_are_one_error_naming_the_key(extra, key, checkpoints, tmp_path):
    with pytest.raises(ConfigError) as err:
        train_lm(None, _args(checkpoints["llama"], checkpoints["text"], tmp_path, "bad", *extra))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_bad_checkpoints_and_tokenizers_are_one_error_naming_the_key(checkpoints, tmp_path):
    text = checkpoints["text"]
    cases = [
        (tmp_path / "missing", [], "model.pretrained"),
        (text, [], "model.pretrained"),                                       # a folder without config.json
        (checkpoints["gpt2_no_tok"], [], "data.tokenizer=byte"),              # vocab 300, byte tokenizer (257)
        (checkpoints["llama"], [f"data.tokenizer={checkpoints['gpt2']}"], "data.tokenizer"),  # 300 > 257
    ]
    for ckpt, extra, key in cases:
        with pytest.raises(ConfigError) as err:
            train_lm(None, _args(ckpt, text, tmp_path, "bad", *extra))
        assert str(err.value).startswith(key) and "\n" not in str(err.value), (ckpt, str(err.value))
    assert not (tmp_path / "bad").exists()


def test_trainer_task_options(checkpoints, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="min_input_scale"):
        sth.StimulativeTrainer(model, args, st_options={"min_input_scale": 0.5})
    with pytest.raises(ValueError, match="task"):
        sth.StimulativeTrainer(model, args, task="seq2seq")
    assert sth.is_causal_lm(model) and not sth.is_causal_lm(transformers.ViTForImageClassification(
        transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                               image_size=8, patch_size=4)))


def test_trainer_on_padded_batches_equals_the_token_step(checkpoints, tmp_path):
    """Right-padded batches with an attention mask: the step sees the ids with -100 at the padding."""
    torch.manual_seed(0)
    rows = [torch.randint(0, 256, (n,)) for n in (12, 7, 9, 12)]
    data = [{"input_ids": torch.cat([r, torch.full((12 - len(r),), 256)]),
             "attention_mask": torch.cat([torch.ones(len(r), dtype=torch.long),
                                          torch.zeros(12 - len(r), dtype=torch.long)])} for r in rows]
    for d in data:  # labels as DataCollatorForLanguageModeling(mlm=False) makes them: the ids, -100 at padding
        d["labels"] = d["input_ids"].masked_fill(d["attention_mask"] == 0, -100)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                                          learning_rate=LR, lr_scheduler_type="constant", use_cpu=True,
                                          report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = SequentialTrainer(model, args, train_dataset=data, st_options={"num_subnets": 1, "seed": 1})
    trainer.train()
    logged = next(r for r in trainer.state.log_history if "st_main" in r)

    ref = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True).train()
    ids = torch.stack([d["input_ids"].masked_fill(d["attention_mask"] == 0, -100) for d in data])
    with torch.no_grad():
        main = torch.nn.functional.cross_entropy(TokenLogits(ref)(ids), next_token_targets(ids))
    assert abs(logged["st_main"] - main.item()) < 1e-5


def test_trainer_refuses_prompt_masked_labels(checkpoints, tmp_path):
    """Labels with -100 on a prompt ask for a loss the token step does not compute: refused, naming 'labels'."""
    ids = torch.randint(0, 256, (12,))
    prompt_masked = ids.clone()
    prompt_masked[:5] = -100
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1,
                                          use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    data = [{"input_ids": ids, "labels": prompt_masked}] * 2
    trainer = SequentialTrainer(model, args, train_dataset=data, st_options={"num_subnets": 1})
    with pytest.raises(ValueError, match="labels"):
        trainer.train()
    assert all(p.grad is None for p in model.parameters())  # refused before any backward


def test_trainer_accepts_collator_labels_when_pad_is_eos(checkpoints, tmp_path):
    """pad_token = eos_token: DataCollatorForLanguageModeling puts -100 on every eos, real ones included; that is
    not prompt masking, so it trains (and the eos stays a target), given the model's pad id."""
    eos = 7
    ids = torch.tensor([[5, 9, eos, 11, 12, 13, eos, eos], [3, 4, 5, 6, eos, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])  # the last eos of row 0 is padding
    labels = ids.masked_fill(ids == eos, -100)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1,
                                          use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                                          learning_rate=LR, lr_scheduler_type="constant", logging_steps=1)
    data = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels)]
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="labels"):  # without a pad id the -100 on real tokens is a mask
        SequentialTrainer(model, args, train_dataset=data, st_options={"num_subnets": 1}).train()
    model.config.pad_token_id = eos
    trainer = SequentialTrainer(model, args, train_dataset=data, st_options={"num_subnets": 1, "seed": 1})
    trainer.train()
    logged = next(r for r in trainer.state.log_history if "st_main" in r)
    ref = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["llama"], local_files_only=True).train()
    masked = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        main = torch.nn.functional.cross_entropy(TokenLogits(ref)(masked), next_token_targets(masked))
    assert abs(logged["st_main"] - main.item()) < 1e-5  # every real next token, the real eos included


def test_docs_causal_lm_trainer_snippet_runs(checkpoints, tmp_path, monkeypatch):
    """The causal-LM Trainer example of docs/integrations/transformers.md (its third python block)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert "task" in blocks[2] or "my-llama" in blocks[2]
    blocks = [blocks[2]]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoints["llama"], tmp_path / "my-llama")
    namespace: dict = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)
    assert namespace["trainer"].task == "causal_lm"
    assert (tmp_path / "my-llama-st-d2" / "config.json").is_file()
