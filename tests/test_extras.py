"""A missing optional dependency is one helpful error naming its extra, from the library and from the CLI.

The extras are installed here, so each test simulates a missing one: ``sys.modules[name] = None`` makes
``import name`` raise ``ModuleNotFoundError``, and the module under test is imported again.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from test_cli_train import tiny

from stimulative._extras import MissingExtraError, missing_extra, require
from stimulative.cli import main


def hide(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail for each of ``names`` (restored after the test)."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def reimport(monkeypatch, module: str):
    """Import ``module`` afresh (the cached one is restored after the test)."""
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


def check(err: BaseException, extra: str) -> None:
    assert isinstance(err, MissingExtraError) and isinstance(err, ModuleNotFoundError)
    message = str(err)
    assert f'pip install "stimulative[{extra}]"' in message and "\n" not in message


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "none") is sys.modules["json"]
    hide(monkeypatch, "onnx")
    with pytest.raises(MissingExtraError) as info:
        require("onnx", "onnx", "the onnx export format")
    check(info.value, "onnx")
    assert str(info.value).startswith("the onnx export format needs onnx (")


@pytest.mark.parametrize("module, hidden, extra", [
    ("stimulative.integrations.lightning", ("lightning", "lightning.pytorch"), "lightning"),
    ("stimulative.integrations.transformers", ("transformers",), "transformers"),
])
def test_integrations_without_their_extra(monkeypatch, module, hidden, extra):
    hide(monkeypatch, *hidden)
    with pytest.raises(MissingExtraError) as info:
        reimport(monkeypatch, module)
    check(info.value, extra)
    assert module in str(info.value)


def test_export_formats_without_their_extra(monkeypatch, tmp_path):
    from stimulative.deploy.export import OnnxFormat, SafetensorsFormat

    model = torch.nn.Linear(2, 2)
    hide(monkeypatch, "onnx", "onnxruntime")
    for call in (lambda: OnnxFormat().write(model, tmp_path / "m.onnx", None),
                 lambda: OnnxFormat().verify(model, tmp_path / "m.onnx", None)):
        with pytest.raises(MissingExtraError) as info:
            call()
        check(info.value, "onnx")
    hide(monkeypatch, "safetensors", "safetensors.torch")
    with pytest.raises(MissingExtraError) as info:
        SafetensorsFormat().write(model, tmp_path / "m.safetensors", None)
    check(info.value, "safetensors")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.safetensors").exists()


def test_tensorboard_and_tokenizer_without_their_extra(monkeypatch, tmp_path):
    from stimulative.lm.data import HFTokenizer
    from stimulative.train.log import MetricsLog

    hide(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    with pytest.raises(MissingExtraError) as info:
        MetricsLog(tmp_path, tensorboard=True)
    check(info.value, "tensorboard")
    assert "tensorboard=true" in str(info.value)
    hide(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError) as info:
        HFTokenizer(tmp_path)
    check(info.value, "transformers")


def test_cli_prints_the_missing_extra_as_one_line(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    assert main(["train", *tiny(tmp_path), "epochs=1", "tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stimulative train: error: tensorboard=true needs tensorboard (") and "\n" not in err
    assert err.endswith('pip install "stimulative[tensorboard]"')


def test_cli_names_the_extra_of_a_direct_import(monkeypatch, capsys):
    """Code that imports an extra's module directly (``import transformers``) gets the same line from the CLI;
    a missing module no extra installs is a bug and keeps its traceback."""
    import stimulative.commands.eval as eval_command

    def raising(name: str):
        def run(args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return run

    monkeypatch.setattr(eval_command, "run", raising("transformers"))
    assert main(["eval", "x.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("stimulative eval: error: transformers is not installed (No module named 'transformers'): "
                   'pip install "stimulative[transformers]"')
    monkeypatch.setattr(eval_command, "run", raising("not_an_extra"))
    with pytest.raises(ModuleNotFoundError):
        main(["eval", "x.pt"])
    assert missing_extra(ModuleNotFoundError("x", name="onnxruntime.capi")).extra == "onnx"
    assert missing_extra(ValueError("x")) is None
