"""Experiment sizes for the three run profiles: ``ci``, ``book`` and ``full``.

Every chapter asks :func:`sizes` for its numbers instead of branching on the
profile name::

    from lamini_lite.experiments import ch02_slick   # registers the sections it uses
    from lamini_lite.profiles import sizes
    S = sizes("slick")          # the active profile's sizes of the SliCK probe
    S.per_relation, S.exemplar_sets   # attribute access
    dict(S)                     # or a plain dict

The active profile comes from the environment variable ``LAMINI_LITE_PROFILE``:

* ``ci``   -- the smallest sizes at which every chapter's assertions still hold;
* ``book`` -- (default) the sizes the committed notebook outputs come from,
  a few minutes per notebook on a 2-core CPU;
* ``full`` -- as close to the papers' scale as a CPU allows (hours).

The book's experiment modules (:mod:`lamini_lite.experiments`, one per chapter)
register their tables with :func:`register_sizes`, next to the studies that use
them; the library itself never reads a profile, so a reader who reuses it passes
every size explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

PROFILES: tuple[str, ...] = ("ci", "book", "full")
DEFAULT_PROFILE = "book"
ENV_VAR = "LAMINI_LITE_PROFILE"

_REGISTRY: dict[str, dict[str, dict[str, Any]]] = {}


class Sizes(Mapping):
    """Read-only sizes of one section in one profile (attribute or key access)."""

    def __init__(self, section: str, profile: str, values: Mapping[str, Any]):
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_profile", profile)
        object.__setattr__(self, "_values", dict(values))

    @property
    def profile(self) -> str:
        """The profile these sizes belong to."""
        return self._profile

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"sizes({self._section!r}) has no field {name!r}; "
                f"fields: {sorted(self._values)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Sizes are read-only; change them in register_sizes()")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Sizes[{self._section}/{self._profile}]({body})"


def active_profile() -> str:
    """Return the profile named by ``LAMINI_LITE_PROFILE`` (default ``book``).

    Raises:
        ValueError: if the variable names no known profile.
    """
    name = os.environ.get(ENV_VAR, "").strip() or DEFAULT_PROFILE
    return check_profile(name)


def check_profile(name: str) -> str:
    """Return ``name`` if it is a valid profile, else raise a clear ValueError."""
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from {ENV_VAR} or the profile argument); "
            f"valid profiles: {', '.join(PROFILES)}"
        )
    return name


def register_sizes(section: str, *, ci: Mapping[str, Any], book: Mapping[str, Any],
                   full: Mapping[str, Any]) -> None:
    """Register the sizes of ``section`` for each profile.

    The three tables must have the same keys, so that a chapter never meets a
    size that exists in one profile only.
    """
    tables = {"ci": dict(ci), "book": dict(book), "full": dict(full)}
    keys = {name: set(t) for name, t in tables.items()}
    if not keys["ci"] == keys["book"] == keys["full"]:
        raise ValueError(
            f"register_sizes({section!r}): the profiles must define the same fields; "
            f"got ci={sorted(keys['ci'])}, book={sorted(keys['book'])}, full={sorted(keys['full'])}"
        )
    _REGISTRY[section] = tables


def registered_sections() -> list[str]:
    """Names of all sections registered so far."""
    return sorted(_REGISTRY)


def sizes(section: str, profile: str | None = None) -> Sizes:
    """Sizes of ``section`` in ``profile`` (default: the active profile).

    Sections are registered by the experiment module that uses them (importing
    ``lamini_lite.experiments.chNN_...`` registers its chapter's sections and the
    shared ones of :mod:`lamini_lite.experiments.common`).
    """
    profile = check_profile(profile) if profile is not None else active_profile()
    if section not in _REGISTRY:
        raise KeyError(
            f"no sizes registered for section {section!r}; registered sections: "
            f"{registered_sections()} (a chapter's module in lamini_lite.experiments "
            f"registers its sections when imported)"
        )
    return Sizes(section, profile, _REGISTRY[section][profile])
