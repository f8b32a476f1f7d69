"""The book's claims, defined once and checked the same way everywhere.

A chapter does not write ``assert x > 0.5``. It states a :class:`Claim` once,
in its experiment module (``lamini_lite.experiments``), with the quantity's
comparison and threshold, and checks the measured value with :func:`check`::

    from lamini_lite.claims import Claim, check

    SLOWER = Claim("ch03.unknown_fitted_slower",
                   "Unknown examples are fitted more slowly than Known ones",
                   ">", 0.0, unit="points")
    check(SLOWER, known_share - unknown_share)

:func:`check` prints one line (the value, the threshold, the margin and, for a
statistical claim, the 95% interval) and raises :class:`ClaimFailed` (an
``AssertionError``) when the claim does not hold, so a notebook stops as with
an assert. The robustness command (``python -m lamini_lite.bench
robustness``) executes the chapters once per seed with ``LAMINI_LITE_CLAIMS_LOG``
set: every check is then also appended to that JSON-lines file, and with
``LAMINI_LITE_CLAIMS_MODE=record`` a failing claim is recorded instead of
raised, so that one run measures every claim of a chapter.

A statistical claim (``on="low"`` or ``on="high"``) is tested on an end of its
interval instead of the point estimate: "the accuracy gap is above 0" becomes
"the lower end of the gap's 95% interval is above 0".
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import Interval

__all__ = ["Claim", "Check", "ClaimFailed", "check", "LOG_ENV", "MODE_ENV", "OPS",
           "registered_claims"]

LOG_ENV = "LAMINI_LITE_CLAIMS_LOG"  # JSON-lines file every check is appended to
MODE_ENV = "LAMINI_LITE_CLAIMS_MODE"  # "raise" (default) or "record"

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_REGISTRY: dict[str, Claim] = {}


class ClaimFailed(AssertionError):
    """A claim did not hold on this run."""


@dataclass(frozen=True)
class Claim:
    """One thing the book says the reader will see, as a testable comparison."""

    id: str  # "chNN.short_name", unique in the book
    text: str  # the claim in words, as the chapter states it
    op: str  # ">", ">=", "<" or "<=": value OP threshold must hold
    threshold: float  # the bound the value is compared with
    unit: str = ""  # unit of value and threshold, for printing ("%", "nats", "x")
    on: str = "estimate"  # "estimate", or "low"/"high": test that end of the interval

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Claim {self.id!r}: op must be one of {sorted(OPS)}, got {self.op!r}")
        if self.on not in ("estimate", "low", "high"):
            raise ValueError(f"Claim {self.id!r}: on must be 'estimate', 'low' or 'high', "
                             f"got {self.on!r}")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise ValueError(f"Claim {self.id!r}: threshold must be a finite number, "
                             f"got {self.threshold!r}")
        if "." not in self.id:
            raise ValueError(f"Claim id must read 'chapter.name', got {self.id!r}")
        known = _REGISTRY.get(self.id)
        if known is not None and known != self:
            raise ValueError(f"claim {self.id!r} is defined twice, differently")
        _REGISTRY[self.id] = self

    @property
    def chapter(self) -> str:
        """The chapter part of the id (``"ch03"``)."""
        return self.id.split(".", 1)[0]

    def tested(self, value: float, interval: Interval | None) -> float:
        """The number compared with the threshold: the value or an end of the interval."""
        if self.on == "estimate":
            return float(value)
        if interval is None:
            raise ValueError(f"claim {self.id!r} is tested on the interval's {self.on} end; "
                             "pass interval=")
        return float(interval.low if self.on == "low" else interval.high)

    def margin(self, tested: float) -> float:
        """How far ``tested`` is on the right side of the threshold (negative: fails)."""
        return tested - self.threshold if self.op in (">", ">=") else self.threshold - tested


@dataclass(repr=False)
class Check:
    """The outcome of one :func:`check` (shown as its one-line summary)."""

    claim: str  # claim id
    text: str  # the claim in words
    value: float  # the measured point estimate
    tested: float  # the number compared with the threshold
    op: str  # comparison
    threshold: float  # bound
    margin: float  # tested - threshold (or threshold - tested for < / <=)
    holds: bool  # whether the comparison holds
    unit: str = ""  # unit
    low: float | None = None  # 95% interval, when given
    high: float | None = None
    label: str = ""  # which instance (e.g. "seed 1"), when one claim is checked several times
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth recording

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        ci = "" if self.low is None else f" (95% CI {self.low:.4g} to {self.high:.4g})"
        what = "" if self.tested == self.value else f"; tested {self.tested:.4g}"
        mark = "holds" if self.holds else "FAILS"
        label = f" [{self.label}]" if self.label else ""
        return (f"claim {self.claim}{label}: {self.value:.4g}{unit}{ci}{what} "
                f"{self.op} {self.threshold:g}{unit} -> {mark}, margin {self.margin:.3g}")

    __repr__ = __str__  # a bare check(...) ending a notebook cell shows the summary


def registered_claims() -> dict[str, Claim]:
    """Every claim defined so far (by the experiment modules imported)."""
    return dict(_REGISTRY)


def _as_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    return out


def check(claim: Claim, value: float, *, interval: Interval | None = None,
          label: str = "", quiet: bool = False, **extra: Any) -> Check:
    """Check ``claim`` on the measured ``value`` (and its 95% ``interval``).

    Prints the outcome (unless ``quiet``), appends it to ``$LAMINI_LITE_CLAIMS_LOG``
    when that is set, and raises :class:`ClaimFailed` when the claim does not
    hold, unless ``$LAMINI_LITE_CLAIMS_MODE`` is ``record``.
    """
    if not isinstance(claim, Claim):
        raise TypeError(f"claim must be a Claim, got {type(claim).__name__}")
    value = _as_float("value", value)
    if interval is not None and not isinstance(interval, Interval):
        raise TypeError(f"interval must be a lamini_lite.stats.Interval, got {interval!r}")
    tested = claim.tested(value, interval)
    holds = (not math.isnan(tested)) and OPS[claim.op](tested, claim.threshold)
    margin = claim.margin(tested)
    result = Check(claim.id, claim.text, value, tested, claim.op, float(claim.threshold),
                   margin, bool(holds), claim.unit,
                   None if interval is None else interval.low,
                   None if interval is None else interval.high, label,
                   {k: _jsonable(v) for k, v in extra.items()})
    if not quiet:
        print(result)
    _record(result)
    if not holds and os.environ.get(MODE_ENV, "raise") != "record":
        raise ClaimFailed(f"{result}\n  ({claim.text})")
    return result


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def _record(result: Check) -> None:
    path = os.environ.get(LOG_ENV, "").strip()
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    row = asdict(result)
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    with p.open("a") as f:
        f.write(json.dumps(row) + "\n")
