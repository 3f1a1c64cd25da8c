"""``ssmkit generate`` and ``ssmkit convert`` on the command line."""

from __future__ import annotations

import io as stdio
import json

import pytest
import torch
from checkpoint_helpers import make_tokenizer_json, one_thread, rerandomize_  # noqa: F401

from ssmkit.cli import main
from ssmkit.generation import generate
from ssmkit.generation.tokenizer import ByteTokenizer
from ssmkit.io import detect_format, generate_text, load_pretrained, load_tokenizer, save_pretrained
from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LM


@pytest.fixture
def byte_ckpt(tmp_path, gen):
    """A small Mamba LM over the byte vocabulary, saved without a tokenizer.json."""
    model = rerandomize_(LM(ModelConfig.preset("mamba-tiny", d_model=32)).eval(), gen)
    return save_pretrained(model, tmp_path / "byte")


class _Recorder(stdio.StringIO):
    """A text stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_generate_streams_greedy_text_and_reports_speed(byte_ckpt, capsys):
    rc = main(["generate", "--model", str(byte_ckpt), "--prompt", "state space", "--max-new-tokens", "24",
               "--temperature", "0", "--device", "cpu"])
    assert rc == 0
    out, err = capsys.readouterr()
    tok = ByteTokenizer()
    expected = generate(load_pretrained(byte_ckpt), tok.encode("state space"), 24, stop_tokens=[tok.eos_id])
    assert out == "state space" + tok.decode(expected[len(tok.encode("state space")):]) + "\n"
    assert "tokens/s" in err and "first token after" in err


def test_generate_writes_as_tokens_are_produced(byte_ckpt):
    out, err = _Recorder(), stdio.StringIO()
    stats = generate_text(byte_ckpt, "abc", max_new_tokens=16, temperature=1.0, seed=3, device="cpu",
                          out=out, err=err)
    dec = ByteTokenizer().stream_decoder()
    pieces = sum(1 for t in stats.token_ids if dec.push(t))
    assert out.writes == 1 + pieces + 1, "expected one write per decoded piece (plus the prompt and the end)"
    assert out.getvalue() == "abc" + stats.text + "\n" and stats.new_tokens == len(stats.token_ids) >= 1
    again = generate_text(byte_ckpt, "abc", max_new_tokens=16, temperature=1.0, seed=3, device="cpu",
                          out=stdio.StringIO(), err=stdio.StringIO())
    assert again.text == stats.text  # --seed makes sampling reproducible


def test_generate_uses_the_checkpoint_tokenizer(tmp_path, gen):
    ckpt = tmp_path / "bpe"
    make_tokenizer_json(ckpt)
    tok = load_tokenizer(ckpt)
    model = rerandomize_(LM(ModelConfig.preset("mamba-tiny", d_model=32, vocab_size=tok.vocab_size)).eval(), gen)
    save_pretrained(model, ckpt)  # keeps the tokenizer files already there
    out, err = stdio.StringIO(), stdio.StringIO()
    stats = generate_text(ckpt, "hello world", max_new_tokens=12, temperature=0.0, device="cpu", out=out, err=err)
    ids = tok.encode("hello world")
    new = generate(model, ids, 12, stop_tokens=[tok.eos_id])[len(ids):]
    assert stats.new_tokens == len(new) and stats.text == tok.decode(new)


def test_generate_refuses_a_vocabulary_the_byte_tokenizer_cannot_cover(tmp_path, capsys):
    save_pretrained(LM(ModelConfig.preset("mamba-tiny", d_model=16, vocab_size=1000)), tmp_path / "big")
    rc = main(["generate", "--model", str(tmp_path / "big"), "--prompt", "x", "--device", "cpu"])
    assert rc == 1
    assert "no tokenizer.json" in capsys.readouterr().err


def test_generate_reports_bad_sampling_arguments_before_any_output(byte_ckpt, capsys):
    rc = main(["generate", "--model", str(byte_ckpt), "--prompt", "x", "--top-p", "1.5", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "ssmkit generate: error:" in err and "`top_p` must be None or in (0, 1]" in err


@pytest.mark.parametrize("to", ["hf", "ssmkit"])
def test_convert_command(to, byte_ckpt, tmp_path, gen, capsys):
    dst = tmp_path / "out"
    assert main(["convert", str(byte_ckpt), str(dst), "--to", to, "--max-shard-size", "20KB"]) == 0
    assert f"({to} layout)" in capsys.readouterr().err
    assert detect_format(dst) == to
    assert len(list(dst.glob("model-*.safetensors"))) > 1  # sharded as asked
    a, b = load_pretrained(byte_ckpt), load_pretrained(dst)
    ids = torch.randint(0, 259, (2, 17), generator=gen)
    with torch.no_grad():
        assert torch.equal(a(ids)[0], b(ids)[0])
    if to == "hf":
        raw = json.loads((dst / "config.json").read_text())
        assert (raw["bos_token_id"], raw["eos_token_id"], raw["pad_token_id"]) == (256, 257, 258)


def test_convert_copies_the_tokenizer(tmp_path, gen):
    src = tmp_path / "src"
    make_tokenizer_json(src)
    V = load_tokenizer(src).vocab_size
    save_pretrained(LM(ModelConfig.preset("mamba-tiny", d_model=16, vocab_size=V)), src)
    assert main(["convert", str(src), str(tmp_path / "dst"), "--to", "hf"]) == 0
    assert (tmp_path / "dst" / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    assert load_tokenizer(tmp_path / "dst").eos_id == 1


def test_convert_reports_a_bad_source(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "ssmkit convert: error: checkpoint directory" in capsys.readouterr().err
