"""An exit-adapter run on the one engine (``stimulative train ... adapter.layer=K``): the same adapter as
``train_exit_adapter`` on the same batches, the model bit-identical to ``model.pretrained``, a checkpoint that
holds the adapter only and resumes to the uninterrupted run's weights, ``exit_adapter.pt`` that ``generate`` and
``open_run`` read (also from an export), and the keys it cannot honour refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_lm_pretrained import llama_dir, text_folder  # noqa: E402

import stimulative as st  # noqa: E402
from stimulative import hf as st_hf  # noqa: E402
from stimulative.cli import main  # noqa: E402
from stimulative.lm.adapter import ADAPTER_FILE, ExitAdapter, load_adapter, train_exit_adapter  # noqa: E402
from stimulative.lm.config import ConfigError, load_lm_config  # noqa: E402
from stimulative.lm.evaluate import depth_losses  # noqa: E402
from stimulative.lm.export import export_lm  # noqa: E402
from stimulative.lm.loafing import lm_loafing  # noqa: E402
from stimulative.lm.train import load_lm_data, resolve_pretrained, train_lm  # noqa: E402
from stimulative.train.checkpoint import load_checkpoint  # noqa: E402

torch.set_num_threads(1)
LAYER, RANK, LR, WARMUP, STEPS = 2, 8, 1e-2, 2, 4


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapter_run")
    return {"text": text_folder(root / "text"), "llama": llama_dir(root / "llama"), "root": root}


def _args(p: dict[str, Path], name: str, *extra: str) -> list[str]:
    # AdamW as train_exit_adapter's (betas 0.9/0.999, no weight decay), constant LR after a linear warmup
    return [f"model.pretrained={p['llama']}", f"data.root={p['text']}", f"out_dir={p['root'] / 'runs'}",
            f"name={name}", "model.context=16", "batch_size=4", "eval_batch_size=8", "data.val_blocks=4",
            f"steps={STEPS}", f"eval_every={STEPS}", "log_every=1000", "threads=1", "device=cpu", "seed=0",
            "st.num_subnets=0", f"adapter.layer={LAYER}", f"adapter.rank={RANK}", f"optim.lr={LR}",
            "optim.betas=[0.9,0.999]", "optim.weight_decay=0", "optim.schedule=constant",
            f"optim.warmup_steps={WARMUP}", "optim.min_lr=0", "optim.clip_grad=1.0", *extra]


@pytest.fixture(scope="module")
def run(pretrained) -> dict:
    return train_lm(None, _args(pretrained, "adapter"))


def test_engine_run_equals_train_exit_adapter_and_leaves_the_model_untouched(pretrained, run):
    cfg = resolve_pretrained(load_lm_config(None, _args(pretrained, "adapter")))
    data = load_lm_data(cfg)
    batches = [data.train_batch(i, cfg.batch_size, cfg.seed) for i in range(STEPS)]
    model = transformers.AutoModelForCausalLM.from_pretrained(pretrained["llama"], local_files_only=True).float()
    torch.manual_seed(cfg.seed)  # the engine builds the adapter from the run's seed, right after the model
    transformers.AutoModelForCausalLM.from_pretrained(pretrained["llama"], local_files_only=True)
    adapter = ExitAdapter(32, LAYER, rank=RANK)
    train_exit_adapter(model, adapter, batches, STEPS, lr=LR, warmup_steps=WARMUP, clip_grad=1.0)

    loaded = st.open_run(run["run_dir"])
    assert loaded.exit_adapter is not None and loaded.exit_adapter.layer == LAYER
    for name, want in adapter.state_dict().items():
        torch.testing.assert_close(loaded.exit_adapter.state_dict()[name], want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(loaded.exit_adapter.up.weight, torch.zeros_like(loaded.exit_adapter.up.weight))
    for name, want in model.state_dict().items():  # open_run rebuilds model.pretrained itself, not a random init
        assert torch.equal(loaded.model.state_dict()[name], want), name
    # the model the run trained against and validated is model.pretrained's, unchanged at the end
    val = data.val_batches(cfg.data.val_blocks, cfg.eval_batch_size)
    full = depth_losses(st_hf.elastic_depth(model), val, [4])[4]["loss"]
    assert run["final"]["val_loss"] == pytest.approx(full, rel=1e-6)

    ckpt = load_checkpoint(Path(run["run_dir"]) / "last.pt")
    assert set(ckpt["model"]) == set(adapter.state_dict())  # the checkpoint holds the adapter only
    assert ckpt["exit_adapter"]["layer"] == LAYER
    saved = load_adapter(Path(run["run_dir"]) / ADAPTER_FILE)
    for name, want in loaded.exit_adapter.state_dict().items():
        assert torch.equal(saved.state_dict()[name], want)
    final = run["final"]
    assert 0.0 <= final[f"val_agree_d{LAYER}"] <= 1.0 and final[f"val_loss_d{LAYER}"] > 0
    assert not any(k.startswith("val_agree_d") and k != f"val_agree_d{LAYER}" for k in final)
    # no main loss is trained: the record says so (None), not a 0 that plots as a perfect fit; the KL is the loss
    assert final["train_loss_main"] is None
    assert final["train_loss"] == pytest.approx(final["train_loss_subnet"]) and final["train_loss"] > 0


def test_a_stopped_adapter_run_resumes_to_the_uninterrupted_weights(pretrained, run):
    train_lm(None, _args(pretrained, "adapter_stop", "max_steps=2"))
    resumed = train_lm(None, _args(pretrained, "adapter_stop", "resume=auto"))
    assert resumed["step"] == STEPS
    a = st.open_run(run["run_dir"]).exit_adapter.state_dict()
    b = st.open_run(resumed["run_dir"]).exit_adapter.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_generate_drafts_through_the_runs_adapter_and_its_export(pretrained, run, capsys, tmp_path, monkeypatch):
    import stimulative.lm.speculative as speculative

    seen = []
    real = speculative.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("exit_adapter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(speculative, "generate", spy)
    base = ["generate", run["run_dir"], "--prompt", "def x", "--max-new-tokens", "6", "--compare", "--repeats", "1"]
    assert main([*base, "--exit", str(LAYER)]) == 0  # 0: identical to plain greedy
    out = capsys.readouterr().out
    assert f"drafting through the run's exit adapter on layer {LAYER}" in out
    want = st.open_run(run["run_dir"]).exit_adapter.state_dict()
    assert seen and all(a is not None and all(torch.equal(a.state_dict()[k], want[k]) for k in want) for a in seen)
    seen.clear()
    assert "assistant_early_exit" in out and "skipped" in out  # it cannot draft through the adapter
    assert main([*base, "--exit", "1"]) == 0
    assert "the run's exit adapter is on layer 2" in capsys.readouterr().out
    assert seen and all(a is None for a in seen)  # exit 1 drafts through the model's own head

    info = export_lm(run["run_dir"], None, tmp_path / "export")
    assert info["exit_adapter"] == ADAPTER_FILE and (tmp_path / "export" / ADAPTER_FILE).is_file()
    assert main(["generate", str(tmp_path / "export"), "--exit", str(LAYER), "--prompt", "def x",
                 "--max-new-tokens", "4"]) == 0
    assert "drafting through the run's exit adapter" in capsys.readouterr().out
    assert "exit_adapter" not in export_lm(run["run_dir"], LAYER, tmp_path / "prefix")  # the adapter needs more


def test_a_run_whose_model_is_gone_or_replaced_names_model_pretrained(pretrained, tmp_path):
    moved = tmp_path / "llama"
    shutil.copytree(pretrained["llama"], moved)
    args = [*_args(pretrained, "adapter_moved"), f"model.pretrained={moved}", "steps=2", "eval_every=1"]
    done = train_lm(None, [*args, "max_steps=1"])
    other = transformers.AutoModelForCausalLM.from_pretrained(moved, local_files_only=True)
    with torch.no_grad():
        other.model.layers[3].mlp.down_proj.weight.mul_(1.01)  # the same architecture, other weights
    shutil.rmtree(moved)
    with pytest.raises(ValueError, match=r"model\.pretrained"):  # gone: nothing to open
        st.open_run(done["run_dir"])
    with pytest.raises(ValueError, match=r"model\.pretrained"):  # gone: a resume would train against a random model
        train_lm(None, [*args, "resume=auto"])
    other.save_pretrained(moved)
    with pytest.raises(ValueError, match=r"model\.pretrained.*not the model"):
        st.open_run(done["run_dir"])
    with pytest.raises(ValueError, match=r"model\.pretrained.*not the model"):
        train_lm(None, [*args, "resume=auto"])


def test_a_run_of_the_other_kind_is_not_resumed_as_an_adapter_run(pretrained):
    plain = [a for a in _args(pretrained, "plain_then_adapter", "steps=1", "eval_every=1")
             if not a.startswith("adapter.")]
    train_lm(None, plain)
    with pytest.raises(ConfigError, match=r"adapter\.layer"):
        train_lm(None, [*plain, f"adapter.layer={LAYER}", "resume=auto"])
    # overwrite=true starts afresh in the same folder: the earlier kind's files go
    adapter_run = train_lm(None, [*plain, f"adapter.layer={LAYER}", "overwrite=true"])
    assert (Path(adapter_run["run_dir"]) / ADAPTER_FILE).is_file()
    train_lm(None, [*plain, "overwrite=true"])
    assert not (Path(adapter_run["run_dir"]) / ADAPTER_FILE).exists()


def test_loafing_refuses_an_adapter_run(run):
    with pytest.raises(ValueError, match="exit-adapter run"):
        lm_loafing([run["run_dir"]])


@pytest.mark.parametrize("extra, key", [
    (["model.pretrained=null"], "model.pretrained"),
    (["st.num_subnets=2"], "st.num_subnets"),
    (["layerskip.enabled=true"], "layerskip.enabled"),
    (["eval_depths=[1]"], "eval_depths"),
    (["adapter.rank=0"], "adapter.rank"),
])
def test_keys_an_adapter_run_cannot_honour_are_refused(pretrained, extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_lm_config(None, [*_args(pretrained, "bad"), *extra])


def test_an_adapter_layer_the_model_does_not_have_is_refused(pretrained):
    with pytest.raises(ConfigError, match=r"adapter\.layer"):
        train_lm(None, [*_args(pretrained, "bad_layer"), "adapter.layer=4"])


def test_the_adapter_recipe_is_an_adapter_run(pretrained):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "lm_pretrained_adapter.yaml"
    cfg = load_lm_config(recipe, [f"model.pretrained={pretrained['llama']}"])
    assert (cfg.adapter.layer, cfg.adapter.rank, cfg.st.num_subnets, cfg.layerskip.enabled) == (8, 1024, 0, False)
    with pytest.raises(ConfigError, match=r"model\.pretrained"):  # the recipe names no model
        load_lm_config(recipe)
