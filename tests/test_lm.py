"""Language models: token-level ST loss through StimulativeStep, offline byte-level data, speculative decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import stimulative as st
from stimulative.lm import (
    ByteTokenizer,
    PackedBlocks,
    TokenLogits,
    corpus_files,
    corpus_tokens,
    depth_losses,
    encode_files,
    next_token_targets,
    split_by_file,
    stdlib_files,
    token_batch,
    token_cross_entropy,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------
# Data (no transformers needed)
# --------------------------------------------------------------------------------------------------------------

def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'héllo ∑'\n"
    ids = tok.encode(text, add_eos=True)
    assert ids[-1] == tok.eos_token_id == 256 and max(ids[:-1]) < 256 and tok.vocab_size == 257
    assert tok.decode(ids) == text
    assert tok.encode_bytes(text.encode(), add_eos=True).tolist() == ids


def test_stdlib_split_by_file_is_disjoint_and_stable():
    root = stdlib_files() / "json"
    splits = corpus_files(root, val_fraction=0.3)
    train, val = set(splits["train"]), set(splits["val"])
    assert train and val and not train & val
    assert train | val == {p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert corpus_files(root, val_fraction=0.3) == splits  # deterministic
    # a file's side does not depend on the other files
    fewer = split_by_file(sorted(train | val)[1:], root, val_fraction=0.3)
    assert set(fewer["val"]) <= val or len(val) == 1


def test_stdlib_corpus_skips_site_packages():
    files = corpus_files(stdlib_files(), val_fraction=0.1)
    assert not any("site-packages" in p.parts for p in files["train"] + files["val"])


def test_packed_blocks():
    tok = ByteTokenizer()
    files = corpus_files(stdlib_files() / "json")["train"][:2]
    tokens = encode_files(files, tok)
    assert int((tokens == tok.eos_token_id).sum()) == len(files)
    assert tok.decode(tokens[: files[0].stat().st_size].tolist()) == files[0].read_text()
    blocks = PackedBlocks(tokens, block_size=32)
    assert len(blocks) == (len(tokens) - 1) // 32
    assert blocks[0].shape == (33,) and blocks[0].dtype == torch.int64
    assert blocks[1][0] == blocks[0][-1]  # consecutive blocks share one token
    assert torch.equal(torch.cat([blocks[i][:-1] for i in range(len(blocks))]), tokens[: len(blocks) * 32].long())


def test_data_roots(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("abcdefghij" * 10)
    split = corpus_tokens(one, val_fraction=0.2)
    assert len(split["train"]) == 80 + 1 and len(split["val"]) == 20 + 1
    (tmp_path / "tv" / "train").mkdir(parents=True)
    (tmp_path / "tv" / "val").mkdir()
    (tmp_path / "tv" / "train" / "a.txt").write_text("train text")
    (tmp_path / "tv" / "val" / "b.txt").write_text("val")
    split = corpus_tokens(tmp_path / "tv")
    assert ByteTokenizer().decode(split["val"].tolist()) == "val"


# --------------------------------------------------------------------------------------------------------------
# Token-level ST loss (transformers models)
# --------------------------------------------------------------------------------------------------------------

def _sth():
    """The transformers model adapters (stimulative.hf), or skip the test when the extra is not installed."""
    pytest.importorskip("transformers")
    from stimulative import hf as st_hf

    return st_hf


def _llama(layers=4, vocab=48):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(cfg)


def _padded_batch(vocab=48):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 10), generator=g)
    ids[1, 7:] = -100  # right padding
    ids[2, :3] = -100  # left padding
    return ids


def test_token_logits_rows_and_padding():
    st_hf = _sth()

    model = _llama().eval()
    ids = _padded_batch()
    rows = TokenLogits(model)(ids)
    y = next_token_targets(ids)
    assert rows.shape == (9 + 6 + 6, 48) and y.shape == (21,)
    # row 1 (right padded) equals the unpadded 7-token sequence; row 2 (left padded) the 7 real tokens
    with torch.no_grad():
        assert torch.allclose(rows[9:15], model(ids[1:2, :7]).logits[0, :6], atol=1e-5)
        assert torch.allclose(rows[15:], model(ids[2:3, 3:]).logits[0, :6], atol=1e-5)
    # also through the ElasticDepth wrapper, and the criterion accepts either target form
    ed = st_hf.elastic_depth(model)
    assert torch.equal(TokenLogits(ed.model)(ids), rows)
    assert torch.equal(token_cross_entropy(rows, ids), token_cross_entropy(rows, y))


def _hand_loss(model, ed, ids, configs):
    """Hand-written token-level ST++ loss: main CE + sum over sub-networks of KL- (layer norm of the logits
    over the vocabulary) to the detached full model, every term averaged over the valid next-token positions."""
    real = ids != -100
    mask = real.long()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    inputs = ids.masked_fill(~real, 0)
    valid = (real[:, :-1] & real[:, 1:]).float()
    targets = inputs[:, 1:]
    n = valid.sum()

    def run():
        return model(inputs, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, :-1]

    def norm(z):
        z = z - z.mean(-1, keepdim=True)
        return z / (z.pow(2).mean(-1, keepdim=True) + 1e-7).sqrt()

    full = run()
    logp = full.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    total = -(logp * valid).sum() / n
    teacher = norm(full.detach()).log_softmax(-1)
    for config in configs:
        with ed.depth(config):
            student = norm(run()).log_softmax(-1)
        kl = (teacher.exp() * (teacher - student)).sum(-1)
        total = total + (kl * valid).sum() / n
    return total


def test_st_step_gradients_equal_hand_written_loss():
    st_hf = _sth()

    model = _llama().train()
    ed = st_hf.elastic_depth(model)
    ids = _padded_batch()
    space = st.SampleSpace.ordered(ed.full_depths, seed=0)
    step = st.StimulativeStep(ed, space, num_subnets=3, kl_norm="layer", model=TokenLogits(model), seed=0)
    losses = step(*token_batch(ids))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    configs = step.last_configs
    assert len(configs) == 3 and losses["subnet"] > 0
    model.zero_grad(set_to_none=True)
    _hand_loss(model, ed, ids, configs).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-6, rtol=1e-4), name
    # and the main loss is the token-level CE
    with torch.no_grad():
        assert abs(losses["main"] - float(F.cross_entropy(TokenLogits(model)(ids), next_token_targets(ids)))) < 1e-5


def test_every_other_layer_space_in_the_step():
    """A sub-network pattern that is not a prefix (SortedNet/LayerDrop: every other layer)."""
    st_hf = _sth()

    model = _llama().train()
    ed = st_hf.elastic_depth(model)
    ids = _padded_batch()

    class EveryOther:
        full_depths = ed.full_depths

        def sample(self):
            return st_hf.keep_layers(ed, range(0, 4, 2))

    step = st.StimulativeStep(ed, EveryOther(), num_subnets=1, kl_norm="plain", model=TokenLogits(model))
    step(*token_batch(ids))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    real = ids != -100
    valid = real[:, :-1] & real[:, 1:]
    full = TokenLogits(model)(ids)
    with ed.depth(st_hf.keep_layers(ed, [0, 2])):
        sub = TokenLogits(model)(ids)
    loss = F.cross_entropy(full, next_token_targets(ids)) + F.kl_div(
        sub.log_softmax(-1), full.detach().log_softmax(-1), log_target=True, reduction="sum") / valid.sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-6, rtol=1e-4), name


# --------------------------------------------------------------------------------------------------------------
# Early exit in use: self-speculative decoding gives exactly the greedy output
# --------------------------------------------------------------------------------------------------------------

def test_speculative_decoding_equals_greedy():
    st_hf = _sth()

    model = _llama(layers=3).eval()
    prompt = torch.tensor([[1, 5, 9, 11, 7]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    greedy = model.generate(prompt, **kwargs)
    ed = st_hf.elastic_depth(model)  # patched model: generate is unchanged
    assert torch.equal(model.generate(prompt, **kwargs), greedy)
    early = model.generate(prompt, assistant_early_exit=1, **kwargs)
    draft = st_hf.extract_pretrained(ed, [1]).eval()
    drafted = model.generate(prompt, assistant_model=draft, **kwargs)
    assert greedy.shape[1] == prompt.shape[1] + 12
    assert torch.equal(early, greedy) and torch.equal(drafted, greedy)
    assert model.config.num_hidden_layers == 3  # early exit restored the config


def test_depth_losses_equal_truncated_models():
    st_hf = _sth()

    model = _llama(layers=3)
    ed = st_hf.elastic_depth(model)
    batches = [_padded_batch(), _padded_batch()[:2]]
    result = depth_losses(ed, batches)
    assert sorted(result) == [1, 2, 3] and model.training
    model.eval()
    with torch.no_grad():
        full_top = torch.cat([TokenLogits(model)(b) for b in batches]).argmax(-1)
    model.train()
    for k, row in result.items():
        small = st_hf.extract_pretrained(ed, [k]).eval()
        with torch.no_grad():
            rows = torch.cat([TokenLogits(small)(b) for b in batches])
        expected = F.cross_entropy(rows, torch.cat([next_token_targets(b) for b in batches]))
        assert abs(row["loss"] - float(expected)) < 1e-5 and row["tokens"] == rows.shape[0]
        # top-1 agreement with the full model over the same (unpadded) positions
        assert row["agree"] == pytest.approx(float((rows.argmax(-1) == full_top).float().mean()))
    assert result[3]["agree"] == 1.0 and result[1]["agree"] < 1.0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_depth_losses_read_every_depth_off_one_forward(family, monkeypatch):
    """One forward per batch for all depths (prefix exits) gives the numbers of a forward per depth."""
    st_hf = _sth()
    import transformers

    import stimulative.lm.evaluate as evaluate

    torch.manual_seed(0)
    model = _llama(layers=4) if family == "llama" else transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=257, n_embd=16, n_layer=4, n_head=2, n_positions=64))
    ed = st_hf.elastic_depth(model)
    batches = [_padded_batch(), _padded_batch()[:2]]
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    one = depth_losses(ed, batches)
    assert len(forwards) == 2 + len(batches)  # the exactness check (an exit and a truncated forward), one per batch
    monkeypatch.setattr(evaluate, "_one_forward_exits", lambda *a: None)
    forwards.clear()
    separate = depth_losses(ed, batches)
    handle.remove()
    assert len(forwards) == 4 * len(batches) and model.training
    for k in range(1, 5):
        assert abs(one[k]["loss"] - separate[k]["loss"]) < 1e-6 and one[k]["tokens"] == separate[k]["tokens"]
        assert one[k]["agree"] == separate[k]["agree"]


def test_text_folders_as_users_have_them(tmp_path, capsys):
    """Every UTF-8 file is text, with or without an extension; binary files are skipped and counted."""
    from stimulative.lm.data import is_text_file

    root = tmp_path / "corpus"
    (root / "src").mkdir(parents=True)
    texts = {"LICENSE": "MIT License\n", "README": "# readme\n", "data.jsonl": '{"a": 1}\n', "paper.tex": "\\section{x}\n",
             "src/main.rs": "fn main() {}\n", "src/app.ts": "let x = 1;\n", "notes.txt": "héllo wörld\n"}
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "model.bin").write_bytes(bytes(range(256)))
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    (root / "empty").write_bytes(b"")
    (root / "cut.txt").write_bytes(("é" * 5000).encode("utf-8"))  # 10,000 bytes: the 8 KiB sample cuts a character
    splits = corpus_files(root, val_fraction=0.3)
    found = {p.relative_to(root).as_posix() for p in splits["train"] + splits["val"]}
    assert found == set(texts) | {"cut.txt"}
    assert splits["skipped"] == 4
    assert is_text_file(root / "cut.txt") and not is_text_file(root / "latin1.txt")
    # the LM trainer says it in one line
    from stimulative.lm.config import load_lm_config
    from stimulative.lm.train import load_lm_data

    load_lm_data(load_lm_config(None, [f"data.root={root}", "model.context=8"]))
    assert capsys.readouterr().out.count("4 binary or empty files") == 1


def test_a_folder_without_text_is_one_clear_error(tmp_path):
    root = tmp_path / "binary"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.bin").write_bytes(bytes([0, 1, 2, i]))
    with pytest.raises(ValueError, match=r"0 UTF-8 text files \(3 binary or empty files skipped\)"):
        corpus_files(root)
