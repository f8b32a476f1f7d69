"""Claims: one definition, checked by the notebooks and the robustness command."""

import json

import pytest

from lamini_lite.claims import Claim, ClaimFailed, check, registered_claims
from lamini_lite.stats import Interval


def test_check_holds_and_reports_margin(capsys):
    c = Claim("test.above_half", "more than half", ">", 0.5)
    r = check(c, 0.8)
    assert r.holds and r.margin == pytest.approx(0.3)
    assert "holds" in capsys.readouterr().out
    assert registered_claims()["test.above_half"] is c


def test_check_raises_an_assertion_error_when_the_claim_fails():
    c = Claim("test.below_one", "below one", "<", 1.0, unit="nats")
    with pytest.raises(AssertionError, match="FAILS"):
        check(c, 1.5)
    with pytest.raises(ClaimFailed):
        check(c, 1.0)


def test_interval_claims_test_the_named_end():
    c = Claim("test.gap_positive", "the gap is positive", ">", 0.0, on="low")
    with pytest.raises(ClaimFailed):
        check(c, 0.2, interval=Interval(0.2, -0.05, 0.4), quiet=True)
    r = check(c, 0.2, interval=Interval(0.2, 0.05, 0.4), quiet=True)
    assert r.tested == pytest.approx(0.05) and r.margin == pytest.approx(0.05)
    with pytest.raises(ValueError, match="interval"):
        check(c, 0.2)


def test_record_mode_logs_instead_of_raising(tmp_path, monkeypatch):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("LAMINI_LITE_CLAIMS_LOG", str(log))
    monkeypatch.setenv("LAMINI_LITE_CLAIMS_MODE", "record")
    c = Claim("test.recorded", "recorded", ">=", 2.0)
    r = check(c, 1.0, label="seed 3", quiet=True)
    assert not r.holds
    check(c, 3.0, quiet=True)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [row["holds"] for row in rows] == [False, True]
    assert rows[0]["label"] == "seed 3" and rows[0]["margin"] == -1.0


def test_bad_definitions_are_clear_errors():
    with pytest.raises(ValueError, match="op must be"):
        Claim("test.bad_op", "x", "==", 1.0)
    with pytest.raises(ValueError, match="chapter.name"):
        Claim("nodot", "x", ">", 1.0)
    Claim("test.twice", "x", ">", 1.0)
    with pytest.raises(ValueError, match="defined twice"):
        Claim("test.twice", "x", ">", 2.0)
    with pytest.raises(TypeError, match="value must be a number"):
        check(Claim("test.num", "x", ">", 1.0), "many")
