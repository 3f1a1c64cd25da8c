"""``python -m ssmkit`` runs the command line (the same parser as the ``ssmkit`` script)."""

import subprocess
import sys


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "ssmkit", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ssmkit") and "convert" in done.stdout


def test_python_dash_m_reports_a_bad_command():
    done = subprocess.run([sys.executable, "-m", "ssmkit", "no-such-command"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'no-such-command'" in done.stderr
