"""From a GGUF file to a run (issue 29, item 1): ``stimulative convert`` and ``model.pretrained=<file>.gguf``.

No download and no wheel: a tiny random Llama is written as GGUF here with the ``gguf`` package (llama.cpp's
tensor names and q/k row order, F32 norms, an F16 embedding, Q8_0 and Q4_1 matrices, a byte-level BPE tokenizer
trained on a few lines). The converted directory gives the logits of the GGUF-loaded model exactly, its tokenizer
round-trips, an LM run on the ``.gguf`` equals a run on the converted directory and converts only once; bad
inputs are one clear error naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from test_lm_pretrained import _args, bpe_tokenizer, text_folder  # noqa: E402

import stimulative.lm.gguf as gguf_mod  # noqa: E402
from stimulative._extras import MissingExtraError  # noqa: E402
from stimulative.cli import main  # noqa: E402
from stimulative.lm.config import ConfigError  # noqa: E402
from stimulative.lm.data import HFTokenizer  # noqa: E402
from stimulative.lm.gguf import CONVERT_INFO, GGUFError, cached_gguf, convert_gguf, inspect_gguf  # noqa: E402
from stimulative.lm.model import load_lm  # noqa: E402
from stimulative.lm.train import train_lm  # noqa: E402

Q = gguf.GGMLQuantizationType
LAYERS, HIDDEN, INTER, HEADS, KV_HEADS, POSITIONS = 4, 64, 128, 4, 2, 64
TEXTS = ["def value(self):\n    return self.x + 1\n", "for x in value: print(x) if x else None", "héllo wörld ✓"]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for attn_q / attn_k (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(tokenizer) -> tuple[list[str], list[str]]:
    """Tokens (by id) and merges of a byte-level BPE ``PreTrainedTokenizerFast``, as GGUF stores them."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    return tokens, merges


def write_llama_gguf(path: Path, tokenizer, arch: str = "llama", odd_tensor: Q | None = None,
                     with_tokenizer: bool = True) -> transformers.LlamaForCausalLM:
    """A tiny random Llama written to ``path`` as a GGUF file; returns the model it was written from.

    Even layers' matrices are Q8_0, odd layers' Q4_1 (de-quantized by ``gguf``), the embedding F16, the rest F32.
    ``odd_tensor``: blk.0.ffn_up.weight is written as that type instead (zero bytes of the right size).
    """
    tokens, merges = _vocab(tokenizer)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
        rms_norm_eps=1e-5, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norms that are not all ones, so their mapping shows
                p.uniform_(0.5, 1.5)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_block_count(LAYERS)
    w.add_context_length(POSITIONS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    if with_tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3 if t == tokenizer.eos_token else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(eos)
        w.add_eos_token_id(eos)
        w.add_pad_token_id(eos)
        w.add_add_bos_token(False)

    def put(name: str, array: np.ndarray, qtype: Q = Q.F32) -> None:
        if qtype == Q.F32:
            w.add_tensor(name, array.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, array.astype(np.float16))
        elif qtype in (Q.Q8_0, Q.Q4_1):
            w.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)
        else:  # bytes of the right size for a type we only need in the header
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((array.shape[0], array.shape[1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)

    put("token_embd.weight", sd["model.embed_tokens.weight"], Q.F16)
    put("output_norm.weight", sd["model.norm.weight"])
    put("output.weight", sd["lm_head.weight"])
    for i in range(LAYERS):
        p, q = f"model.layers.{i}.", (Q.Q8_0, Q.Q4_1)[i % 2]
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], HEADS), q)
        put(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], KV_HEADS), q)
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], q)
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], q)
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], q)
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], odd_tensor if i == 0 and odd_tensor else q)
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def gguf_loaded(path: Path):
    """The model and tokenizer as ``transformers`` loads the GGUF file itself."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gguf")
    text = text_folder(root / "text")
    tok = bpe_tokenizer(text)
    src = write_llama_gguf(root / "tiny.gguf", tok)
    out = convert_gguf(root / "tiny.gguf", root / "converted")
    return {"root": root, "text": text, "tok": tok, "source": src, "gguf": root / "tiny.gguf", "out": out}


def test_converted_model_gives_the_gguf_models_logits(files):
    out = files["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", CONVERT_INFO, "tokenizer.json",
         "tokenizer_config.json"])
    converted = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    loaded, _ = gguf_loaded(files["gguf"])
    assert type(converted) is transformers.LlamaForCausalLM
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert converted.config.num_hidden_layers == LAYERS and converted.config.num_key_value_heads == KV_HEADS
    a, b = converted.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values())
    ids = torch.randint(0, converted.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, loaded(ids).logits)
        # the file's weights, not a fresh initialisation: the source model's up to F16 / Q8_0 / Q4_1 rounding
        src = files["source"](ids).logits
        assert torch.corrcoef(torch.stack([converted(ids).logits.flatten(), src.flatten()]))[0, 1] > 0.95
    emb = files["source"].model.embed_tokens.weight
    assert torch.allclose(converted.model.embed_tokens.weight, emb, atol=1e-3)
    q8 = files["source"].model.layers[0].self_attn.v_proj.weight
    err = (converted.model.layers[0].self_attn.v_proj.weight - q8).abs().max()
    assert 0 < err < 0.02 * q8.abs().max()  # de-quantized Q8_0: close, not equal


def test_tokenizer_round_trips(files):
    tok = HFTokenizer(files["out"])  # what an LM run uses
    _, gguf_tok = gguf_loaded(files["gguf"])
    assert tok.vocab_size == len(files["tok"]) and tok.eos_token_id == files["tok"].eos_token_id
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == files["tok"].encode(text) == gguf_tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text


def test_convert_record(files):
    record = json.loads((files["out"] / CONVERT_INFO).read_text())
    data = files["gguf"].read_bytes()
    assert record["source"] == str(files["gguf"].resolve())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size_bytes"] == len(data)
    matrices = 7 * LAYERS // 2  # q, k, v, o, gate, up, down per layer; half the layers Q8_0, half Q4_1
    assert record["quantization"] == {"F16": 1, "F32": 2 + 2 * LAYERS, "Q4_1": matrices, "Q8_0": matrices}
    assert record["transformers"] == transformers.__version__ and record["architecture"] == "llama"
    assert record["model_class"] == "LlamaForCausalLM" and record["tokenizer"] is True


def test_output_directory_is_atomic_and_not_overwritten(files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GGUFError, match="exists and is not empty.*--overwrite"):
        convert_gguf(files["gguf"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    convert_gguf(files["gguf"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left behind

    def fail(package: str) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_mod, "_version", fail)  # fails while writing the record, after the weights
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(files["gguf"], tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written


def test_bad_inputs_are_one_clear_error(files, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.gguf' does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "o")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        convert_gguf(text, tmp_path / "o")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["gguf"].read_bytes()[:2000])
    with pytest.raises(GGUFError, match="is not a readable GGUF file"):
        convert_gguf(truncated, tmp_path / "o")
    qwen = tmp_path / "qwen.gguf"
    write_llama_gguf(qwen, files["tok"], arch="qwen2")
    with pytest.raises(GGUFError, match="is a 'qwen2' model, which elastic depth cannot cut; supported "
                                        "architectures: llama, gpt2"):
        convert_gguf(qwen, tmp_path / "o")
    q8_1 = tmp_path / "q8_1.gguf"
    write_llama_gguf(q8_1, files["tok"], odd_tensor=Q.Q8_1)
    with pytest.raises(GGUFError, match=r"quantization type Q8_1 \(1 tensors, e.g. blk.0.ffn_up.weight\) that "
                                        r"gguf \S+ cannot de-quantize"):
        convert_gguf(q8_1, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "gguf", None)  # the package is not installed
    with pytest.raises(MissingExtraError, match=r'converting a GGUF file needs gguf .*pip install '
                                                r'"stimulative\[transformers\]"'):
        convert_gguf(files["gguf"], tmp_path / "o")


def test_without_tokenizer(files, tmp_path):
    write_llama_gguf(tmp_path / "bare.gguf", files["tok"], with_tokenizer=False)
    out = convert_gguf(tmp_path / "bare.gguf", tmp_path / "bare")
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / CONVERT_INFO).read_text())["tokenizer"] is False
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(files["tok"])


def test_cli_convert(files, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert main(["convert", str(files["gguf"]), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{out}: LlamaForCausalLM")
    assert "with tokenizer" in lines[0] and f"Q4_1 x{7 * LAYERS // 2}" in lines[0]
    assert (out / "model.safetensors").is_file()
    for argv, expected in (([str(files["gguf"]), "-o", str(out)], "exists and is not empty"),
                           ([str(tmp_path / "none.gguf"), "-o", str(tmp_path / "x")], "does not exist")):
        assert main(["convert", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stimulative convert: error: ") and expected in err[0]
    assert main(["convert", str(files["gguf"]), "-o", str(out), "--overwrite"]) == 0


def test_pretrained_gguf_run_converts_once(files, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("STIMULATIVE_GGUF_CACHE", str(cache))
    calls = []
    real = gguf_mod.convert_gguf

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_mod, "convert_gguf", counting)
    first = train_lm(None, _args(files["gguf"], files["text"], tmp_path, "g1"))
    assert len(calls) == 1 and "converted to" in capsys.readouterr().out
    (entry,) = cache.iterdir()
    assert entry.name.startswith("tiny-") and (entry / CONVERT_INFO).is_file()
    second = train_lm(None, _args(files["gguf"], files["text"], tmp_path, "g2"))
    assert len(calls) == 1 and "using its conversion" in capsys.readouterr().out  # the cache, no second conversion
    # the same run as from the converted directory itself (weights, tokenizer, batches)
    direct = train_lm(None, _args(entry, files["text"], tmp_path, "d"))
    for summary in (first, second):
        assert summary["final"]["val_loss"] == direct["final"]["val_loss"]
        assert summary["final"]["val_loss_d2"] == direct["final"]["val_loss_d2"]
    cached, converted = cached_gguf(files["gguf"])
    assert (cached, converted) == (entry, False)


def test_pretrained_gguf_errors_name_the_key(files, tmp_path, monkeypatch):
    monkeypatch.setenv("STIMULATIVE_GGUF_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_text("no")
    with pytest.raises(ConfigError, match="model.pretrained: .*bad.gguf' is not a GGUF file"):
        train_lm(None, _args(bad, files["text"], tmp_path, "bad"))
    with pytest.raises(ConfigError, match="model.pretrained .*gone.gguf' does not exist"):
        train_lm(None, _args(tmp_path / "gone.gguf", files["text"], tmp_path, "gone"))
    assert inspect_gguf(files["gguf"]).architecture == "llama"


def test_pretrained_gguf_run_resumes_and_reloads(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STIMULATIVE_GGUF_CACHE", str(tmp_path / "cache"))
    whole = train_lm(None, _args(files["gguf"], files["text"], tmp_path, "whole"))
    train_lm(None, _args(files["gguf"], files["text"], tmp_path, "parts", "max_steps=1"))
    capsys.readouterr()
    resumed = train_lm(None, _args(files["gguf"], files["text"], tmp_path, "parts", "resume=auto"))
    log = capsys.readouterr().out
    assert "using its conversion" in log and "is gone" not in log  # the .gguf is there: not the run's copy
    assert resumed["step"] == whole["step"] and resumed["final"]["val_loss"] == whole["final"]["val_loss"]
    loaded = load_lm(tmp_path / "parts")
    assert type(loaded.model) is transformers.LlamaForCausalLM and loaded.tokenizer.encode("def x") == \
        files["tok"].encode("def x")
