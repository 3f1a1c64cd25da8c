"""Checkpoint tokenizers: tokenizer.json through `tokenizers`, else the built-in byte tokenizer."""

from __future__ import annotations

import sys

import pytest
from checkpoint_helpers import make_tokenizer_json

from ssmkit.generation.tokenizer import ByteTokenizer
from ssmkit.io import CheckpointError, HFTokenizer, load_tokenizer

TEXT = "héllo wörld, state spaces ✓ — 状态空间"


def test_tokenizer_json_round_trips_text(tmp_path):
    make_tokenizer_json(tmp_path / "c")
    tok = load_tokenizer(tmp_path / "c")
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) and max(ids) < tok.vocab_size  # merges happened
    assert tok.decode(ids) == TEXT
    assert (tok.eos_id, tok.bos_id) == (1, 0)
    assert tok.decode(ids + [tok.eos_id]) == TEXT  # specials are dropped


def test_stream_decoder_yields_the_same_text_piece_by_piece(tmp_path):
    make_tokenizer_json(tmp_path / "c")
    tok = load_tokenizer(tmp_path / "c")
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(TEXT)]
    assert "".join(pieces) + dec.flush() == TEXT
    assert all("\ufffd" not in p for p in pieces)  # partial characters are held back
    assert sum(1 for p in pieces if p) > 3  # and text does come out while streaming


def test_special_ids_from_config_json(tmp_path):
    make_tokenizer_json(tmp_path / "c", eos_in="config")
    tok = load_tokenizer(tmp_path / "c")
    assert (tok.eos_id, tok.bos_id) == (1, 0)


def test_without_tokenizer_json_the_byte_tokenizer(tmp_path):
    (tmp_path / "c").mkdir()
    tok = load_tokenizer(tmp_path / "c")
    assert isinstance(tok, ByteTokenizer)
    assert tok.decode(tok.encode(TEXT)) == TEXT and tok.eos_id == 257


def test_missing_tokenizers_library_is_a_clear_error(tmp_path, monkeypatch):
    make_tokenizer_json(tmp_path / "c")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(CheckpointError, match=r"needs the `tokenizers` library \(pip install tokenizers\)"):
        load_tokenizer(tmp_path / "c")


def test_corrupt_tokenizer_json(tmp_path):
    make_tokenizer_json(tmp_path / "c")
    (tmp_path / "c" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*tokenizer.json"):
        load_tokenizer(tmp_path / "c")


def test_encode_rejects_non_text(tmp_path):
    make_tokenizer_json(tmp_path / "c")
    with pytest.raises(TypeError, match="`text` must be a str, got bytes"):
        load_tokenizer(tmp_path / "c").encode(b"abc")
