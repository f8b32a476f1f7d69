"""The robustness command's driver: a notebook run that never ends is stopped and retried."""

from __future__ import annotations

import time

import nbformat
import pytest

from lamini_lite.bench import robustness


def _notebook(path, source: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_run_past_its_limit_is_stopped_and_retried_once(tmp_path, capsys):
    nb = _notebook(tmp_path / "sleeps.ipynb", "import time\ntime.sleep(600)")
    t0 = time.time()
    name, seed, secs, err = robustness._execute(nb, 3, tmp_path / "log.jsonl", timeout=900,
                                                notebook_timeout=8)
    assert (name, seed) == ("sleeps", 3)
    assert err == "timed out twice (8 s each)"
    assert time.time() - t0 < 120  # both attempts stopped, kernels included
    out = capsys.readouterr().out
    assert "attempt 1 of 2" in out and "attempt 2 of 2" in out


@pytest.mark.slow
def test_a_run_that_ends_reports_no_error(tmp_path):
    nb = _notebook(tmp_path / "quick.ipynb", "x = 1")
    _, _, _, err = robustness._execute(nb, 0, tmp_path / "log.jsonl", timeout=60,
                                       notebook_timeout=120)
    assert err == ""


def test_bad_limits_are_refused(capsys):
    with pytest.raises(SystemExit):
        robustness.main(["--notebook-timeout", "0"])
    assert "--notebook-timeout" in capsys.readouterr().err
