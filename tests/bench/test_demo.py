"""The main job's demo: every engine built, checked, and the exit code says whether all passed."""

import json

from ssmkit.cli import main


def test_demo_runs_every_engine_and_passes(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--d-model", "16", "--seq-len", "24", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 6 and all(r["ok"] for r in rows)
    assert all(r["err_vs_reference"] < 1e-4 and r["err_step"] < 1e-4 for r in rows)
    assert "| Mamba (selective scan) |" in capsys.readouterr().out


def test_demo_rejects_bad_arguments_before_running(tmp_path, capsys):
    assert main(["demo", "--d-model", "12"]) == 2
    assert "--d-model must be a multiple of 8" in capsys.readouterr().err
    assert main(["demo", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err
