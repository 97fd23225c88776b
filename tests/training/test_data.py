"""Data pipeline: packing equals the reference, the token cache is reused, streaming matches,
non-UTF-8 files are decoded with the stated fallback or rejected by name, batch order is a
per-epoch permutation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitnet.training import dataset as ds_mod
from bitnet.training.config import DataConfig
from bitnet.training.dataset import PackedTokens, batch_indices, pack_reference, prepare_data
from bitnet.training.tokenizer import eos_id, train_bpe

SEQ = 8


def _corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("To be, or not to be, that is the question.\n")
    (d / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(
        ["Whether 'tis nobler in the mind to suffer", "The slings and arrows of outrageous fortune,",
         "Or to take arms against a sea of troubles"])) + "\n")
    return d


def _tokenizer(tmp_path):
    tok = train_bpe(["To be, or not to be: the slings and arrows of outrageous fortune"] * 5, vocab_size=300)
    path = tmp_path / "tok.json"
    tok.save(str(path))
    return tok, path


def test_packing_matches_reference_and_cache_is_reused(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path)
    tok, tok_path = _tokenizer(tmp_path)
    cfg = DataConfig(paths=[str(corpus)], tokenizer=str(tok_path), cache_dir=str(tmp_path / "cache"),
                     seq_len=SEQ, val_fraction=0.25)
    _, cache = prepare_data(cfg, progress=False)
    docs = ["To be, or not to be, that is the question.\n", "Whether 'tis nobler in the mind to suffer",
            "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"]
    ref = pack_reference([tok.encode(t).ids for t in docs], eos_id(tok), SEQ)  # files in sorted order: a.txt, b.jsonl
    data = PackedTokens.open(cache, SEQ, 0.25)
    assert data.n_train + data.n_val == len(ref) and data.n_val == round(len(ref) * 0.25)
    x, y = data.batch(np.arange(data.n_train))  # (n_train, SEQ)
    xv, yv = data.batch(np.arange(data.n_val), split="val")
    got = [(a.tolist(), b.tolist()) for a, b in zip(np.concatenate([x, xv]), np.concatenate([y, yv]))]
    assert got == ref
    assert sum(int(t == eos_id(tok)) for t in data.tokens) == len(docs)  # one EOS after every document

    # Second run: served from the cache, nothing is loaded or tokenized again.
    def boom(*a, **k):
        raise AssertionError("re-tokenized although the cache is valid")

    monkeypatch.setattr(ds_mod, "load_records", boom)
    assert prepare_data(cfg, progress=False)[1] == cache
    # Touching a file changes the key: the cache is rebuilt (and here hits the patched loader).
    (corpus / "a.txt").write_text("changed\n")
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_data(cfg, progress=False)


def test_streaming_writes_the_same_tokens(tmp_path):
    corpus = _corpus(tmp_path)
    _, tok_path = _tokenizer(tmp_path)
    caches = []
    for streaming in (False, True):
        cfg = DataConfig(paths=[str(corpus)], tokenizer=str(tok_path), cache_dir=str(tmp_path / f"c{streaming}"),
                         seq_len=SEQ, streaming=streaming)
        caches.append(prepare_data(cfg, progress=False)[1])
    a, b = ((c / "tokens.bin").read_bytes() for c in caches)
    assert a == b and len(a) > 0


def test_latin1_fallback_and_rejection(tmp_path):
    bad = tmp_path / "speech.txt"
    bad.write_bytes("Caf\u00e9 society, na\u00efve r\u00e9sum\u00e9.\n".encode("latin-1"))
    _, tok_path = _tokenizer(tmp_path)
    cfg = DataConfig(paths=[str(bad)], tokenizer=str(tok_path), cache_dir=str(tmp_path / "c1"), seq_len=4,
                     encoding_fallback="error")
    with pytest.raises(ValueError, match=r"speech\.txt: not valid UTF-8 \(first bad byte at offset 3\)"):
        prepare_data(cfg, progress=False)
    cfg.encoding_fallback = "latin-1"
    with pytest.warns(UnicodeWarning, match=r"speech\.txt.*Latin-1"):
        files = ds_mod.resolve_files(cfg.paths)
        records = ds_mod.load_records(files, cfg, streaming=False)
    assert records[0]["text"] == "Caf\u00e9 society, na\u00efve r\u00e9sum\u00e9.\n"  # decoded, not garbled


def test_state_union_latin1_files_load(tmp_path):
    """The real corpus that motivated the fallback: its Latin-1 files decode and warn by name."""
    from data_paths import shared_path

    src = shared_path("text", "state_union", "1954-Eisenhower.txt")  # ../shared/data, or tests/fixtures/data
    with pytest.raises(UnicodeDecodeError) as e:
        src.read_bytes().decode("utf-8")
    assert ds_mod.check_utf8(src) == e.value.start  # the offset Python's own decoder reports
    with pytest.warns(UnicodeWarning, match="1954-Eisenhower.txt"):
        rec = ds_mod.load_records([src], DataConfig(), streaming=True)
        text = next(iter(rec))["text"]
    assert "\ufffd" not in text and len(text) > 1000


def test_batch_indices_cover_each_epoch():
    n, bs = 10, 4
    seq = np.concatenate([batch_indices(7, s, bs, n) for s in range(5)])  # 20 samples = 2 epochs
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))
    assert not np.array_equal(seq[:10], seq[10:20])  # reshuffled per epoch
    assert np.array_equal(batch_indices(7, 3, bs, n), seq[12:16])  # a pure function of the step


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        ds_mod.resolve_files([str(tmp_path / "nothere")])
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(ValueError, match=r"x\.docx"):
        ds_mod.resolve_files([str(tmp_path / "x.docx")])


def test_gpt2_vocab_and_merges_load():
    from data_paths import SHARED_DATA

    from bitnet.training.tokenizer import load_tokenizer

    gpt2 = SHARED_DATA / "tokenizers" / "gpt2"
    if not gpt2.is_dir():  # 1.5 MB of vocabulary: not copied into tests/fixtures/data
        pytest.skip(f"shared data not present: {gpt2} (../shared/data beside the repo, or $BITNET_SHARED_DATA)")
    tok = load_tokenizer(gpt2)  # encoder.json + vocab.bpe, GPT-2's names for vocab.json + merges.txt
    assert tok.encode("Hello world<|endoftext|>").ids == [15496, 995, 50256]  # GPT-2's published ids
    assert eos_id(tok) == 50256
