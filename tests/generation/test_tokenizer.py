"""Byte-level tokenizer: exact round trip, specials, tolerant partial UTF-8, streaming decode."""

from __future__ import annotations

import pytest

from ssmkit.generation.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, ByteTokenizer

TEXT = "Héllo, 世界! 🙂 state spaces"


def test_round_trip_and_specials():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT, add_eos=True)
    assert ids[0] == BOS and ids[-1] == EOS and all(0 <= i < 256 for i in ids[1:-1])
    assert len(ids) == len(TEXT.encode("utf-8")) + 2
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode(TEXT, add_bos=False)) == TEXT
    assert tok.decode(ids[:-1] + [EOS, ord("x")]) == TEXT  # stops at EOS
    assert tok.decode(ids[:-1] + [EOS, ord("x")], stop_at_eos=False) == TEXT + "x"
    assert tok.decode([PAD, PAD] + ids) == TEXT
    assert (BOS, EOS, PAD, VOCAB_SIZE) == (256, 257, 258, 259)


def test_decode_tolerates_cut_characters():
    tok = ByteTokenizer()
    ids = tok.encode("世", add_bos=False)  # three bytes
    assert len(ids) == 3
    assert tok.decode(ids[:2]) == "\ufffd"  # no exception on a truncated character
    assert tok.decode(ids[1:]).count("\ufffd") >= 1


def test_stream_decoder_emits_only_complete_characters():
    tok = ByteTokenizer()
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(TEXT, add_eos=True)]
    assert "".join(pieces) + dec.flush() == TEXT
    assert "\ufffd" not in "".join(pieces)
    emoji = tok.encode("🙂", add_bos=False)
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in emoji] == ["", "", "", "🙂"]
    dec.push(emoji[0])
    assert dec.flush() == "\ufffd"  # an unfinished character at the end


def test_tokenizer_errors():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match=r"`text` must be a str, got bytes"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match=r"ids must be in \[0, 259\), got 300"):
        tok.decode([1, 300])
    with pytest.raises(ValueError, match=r"`token` must be in \[0, 259\), got -1"):
        tok.stream_decoder().push(-1)
