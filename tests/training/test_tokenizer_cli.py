"""`bitnet train-tokenizer` on a small corpus: the written tokenizer loads, encodes and trains a model."""

from __future__ import annotations

import json

from bitnet.checkpoint import find_model_dir
from bitnet.cli import main
from bitnet.training import train
from bitnet.training.config import load_config
from bitnet.training.tokenizer import EOS_TOKEN, load_tokenizer

VOCAB = 300  # the 256 byte symbols, the end-of-text token and 43 merges


def test_train_tokenizer_cli_output_loads_encodes_and_trains(tmp_path, corpus, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "plays.txt").write_text(corpus.read_text()[:20_000])
    notes = ["Shakespeare wrote Hamlet.", "Shakespeare wrote Macbeth.", "Shakespeare, again: \u00e9t\u00e9."]
    (data / "notes.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in notes * 30))
    out = tmp_path / "tok" / "tokenizer.json"
    out.parent.mkdir()
    argv = ["train-tokenizer", str(data), "-o", str(out), "--vocab-size", str(VOCAB), "--min-frequency", "2",
            "--text-field", "body"]
    assert main(argv) == 0
    assert f"wrote {out}: {VOCAB} tokens from 2 file(s)" in capsys.readouterr().out

    tok = load_tokenizer(out)  # checks it has the end-of-text token
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id(EOS_TOKEN) == 0
    for text in ["ROMEO:\nWhat say you?", "Shakespeare wrote", "\u00e9t\u00e9 \u2603 never seen \U0001f600"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text  # byte-level: nothing is unknown, the round trip is exact
    # a word only the jsonl's "body" field holds, 90 times: one token (8 from the plays alone)
    assert tok.encode("Shakespeare").tokens == ["Shakespeare"]

    run = tmp_path / "run"
    cfg = load_config(None, [
        "model=test-tiny", f"data.paths=[{data}]", "data.text_field=body", f"data.tokenizer={out}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=32", "batch_size=2", "micro_batch_size=2",
        "max_steps=2", "optim.warmup_steps=1", "log.eval_every=2", "log.eval_batches=1", "log.progress=false",
        "log.tensorboard=false", "log.plot=false", "log.sample_tokens=0", "compile=false", "threads=1",
        f"out_dir={run}"])
    train(cfg)
    saved = load_tokenizer(find_model_dir(run) / "tokenizer.json")
    assert saved.to_str() == tok.to_str()  # the run trained on, and saved, the tokenizer we wrote
