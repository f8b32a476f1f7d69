"""A content-keyed cache for expensive results and trained checkpoints.

An entry is identified by a *name* (what kind of result) and the *inputs* that
produced it (a JSON-able mapping: sizes, seed, model fingerprint, protocol...).
The key is a hash of both, so a result made from different inputs lives in a
different folder and can never overwrite another one.

On disk (root: ``$LAMINI_LITE_CACHE``, default ``~/.cache/lamini-lite``)::

    <root>/<name>/<key>/
        meta.json            name, inputs, sha256 of every file below
        tensors.safetensors  the tensor values of the result (if any)
        data.json            the other (JSON-able) values of the result

A result is a flat ``dict`` whose values are tensors or JSON-able objects.
Entries are written to a temporary folder and renamed into place, so an
interrupted run leaves no half-written entry; an entry whose files do not match
their recorded checksums is reported as corrupted and recomputed, never loaded.

Typical use::

    from lamini_lite.cache import cached
    res = cached("slick", {"model": fp, "facts": fp_facts, "seed": 0}, compute)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ENV_VAR = "LAMINI_LITE_CACHE"
FORMAT_VERSION = 1

__all__ = [
    "ResultCache", "CacheCorruptedError", "cache_root", "cache_key", "cached",
    "cached_model", "fingerprint", "atomic_directory",
]


class CacheCorruptedError(RuntimeError):
    """An entry's files do not match the checksums recorded when it was written."""


def cache_root() -> Path:
    """The cache folder: ``$LAMINI_LITE_CACHE`` or ``~/.cache/lamini-lite``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(base).expanduser() / "lamini-lite"


def _jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON types, or raise TypeError naming the culprit."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__dataclass__": type(obj).__name__, **_jsonable(dataclasses.asdict(obj))}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cache inputs: mapping keys must be str, got {k!r}")
            out[k] = _jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)  # exact, and NaN-safe
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": fingerprint(obj)}
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return _jsonable(obj.item())  # numpy scalars
    raise TypeError(
        f"cache inputs must be JSON-able (str, numbers, lists, dicts, dataclasses, "
        f"tensors); got {type(obj).__name__}: {obj!r:.80}"
    )


def cache_key(name: str, inputs: Mapping[str, Any]) -> str:
    """A 20-hex-digit key for (``name``, ``inputs``): same inputs, same key."""
    blob = json.dumps({"name": name, "inputs": _jsonable(inputs), "v": FORMAT_VERSION},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def fingerprint(obj: Any) -> str:
    """A short content hash of a tensor, a module's parameters/buffers, or JSON data.

    Use it to put a model or a data set into a cache key::

        inputs = {"model": fingerprint(model), "facts": fingerprint(facts)}
    """
    h = hashlib.sha256()
    if isinstance(obj, torch.nn.Module):
        for k, v in sorted(obj.state_dict().items()):
            h.update(k.encode())
            h.update(fingerprint(v).encode())
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(json.dumps(_jsonable(obj), sort_keys=True).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    Readers never see a half-written folder: the new one is renamed into place
    only after the ``with`` block succeeds; on error it is deleted. If another
    process renames its own folder into place first, that one is kept.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process wrote the same entry between our check and the
            # rename (parallel notebooks): keep theirs, drop ours.
            if not target.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ResultCache:
    """The cache under ``root`` (default :func:`cache_root`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root()

    def path(self, name: str, inputs: Mapping[str, Any]) -> Path:
        """The folder the entry for (``name``, ``inputs``) lives in."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"cache name must be a non-empty plain word, got {name!r}")
        return self.root / name / cache_key(name, inputs)

    def exists(self, name: str, inputs: Mapping[str, Any]) -> bool:
        """True when a complete entry exists (checksums are checked on load)."""
        return (self.path(name, inputs) / "meta.json").is_file()

    def load(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored result, ``None`` if absent.

        Raises:
            CacheCorruptedError: if the entry's files fail their checksums or
                the stored inputs differ from ``inputs``.
        """
        folder = self.path(name, inputs)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheCorruptedError(f"{meta_path}: unreadable metadata ({e})") from e
        if meta.get("inputs") != _jsonable(inputs) or meta.get("name") != name:
            raise CacheCorruptedError(f"{folder}: stored inputs differ from the requested ones")
        for fname, digest in meta.get("files", {}).items():
            f = folder / fname
            if not f.is_file() or _sha256(f) != digest:
                raise CacheCorruptedError(f"{f}: missing or checksum mismatch")
        result: dict[str, Any] = {}
        if (folder / "data.json").is_file():
            result.update(json.loads((folder / "data.json").read_text()))
        if (folder / "tensors.safetensors").is_file():
            result.update(load_file(folder / "tensors.safetensors"))
        order = meta.get("order")
        if order:
            result = {k: result[k] for k in order if k in result}
        return result

    def save(self, name: str, inputs: Mapping[str, Any], result: Mapping[str, Any], *,
             overwrite: bool = False) -> Path:
        """Store ``result`` (a flat dict of tensors and JSON-able values).

        A valid entry for the same inputs is never replaced unless
        ``overwrite=True``; a corrupted one is replaced.
        """
        if not isinstance(result, Mapping):
            raise TypeError(f"result must be a dict of tensors/JSON values, got {type(result).__name__}")
        folder = self.path(name, inputs)
        if folder.exists() and not overwrite:
            try:
                if self.load(name, inputs) is not None:
                    raise FileExistsError(
                        f"cache entry {folder} already exists for these inputs; "
                        "pass overwrite=True to replace it")
            except CacheCorruptedError:
                pass  # replace the broken entry below
        tensors = {k: v.detach().cpu().clone().contiguous()
                   for k, v in result.items() if isinstance(v, torch.Tensor)}
        data = {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}
        try:
            data_json = json.dumps(data, indent=None)
        except TypeError as e:
            raise TypeError(f"cache result for {name!r}: non-tensor values must be JSON-able ({e})") from e
        with atomic_directory(folder) as tmp:
            files = {}
            if tensors:
                save_file(tensors, tmp / "tensors.safetensors")
                files["tensors.safetensors"] = _sha256(tmp / "tensors.safetensors")
            if data:
                (tmp / "data.json").write_text(data_json)
                files["data.json"] = _sha256(tmp / "data.json")
            meta = {"name": name, "inputs": _jsonable(inputs), "files": files,
                    "order": list(result.keys()), "format": FORMAT_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder


def cached(name: str, inputs: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]], *,
           cache: ResultCache | None = None, refresh: bool = False) -> dict[str, Any]:
    """Return the cached result for (``name``, ``inputs``), computing it if needed.

    ``compute()`` must return a flat dict of tensors and JSON-able values, and
    must be a deterministic function of ``inputs``. A corrupted entry is
    reported with a warning and recomputed. ``refresh=True`` recomputes and
    replaces the entry.
    """
    cache = cache or ResultCache()
    if not refresh:
        try:
            hit = cache.load(name, inputs)
        except CacheCorruptedError as e:
            warnings.warn(f"recomputing corrupted cache entry: {e}", stacklevel=2)
            hit = None
        if hit is not None:
            return hit
    result = dict(compute())
    cache.save(name, inputs, result, overwrite=True)
    # Reload, so callers see exactly what later cache hits will return.
    return cache.load(name, inputs)


def cached_model(name: str, inputs: Mapping[str, Any], build: Callable[[], torch.nn.Module],
                 train: Callable[[torch.nn.Module], Mapping[str, Any] | None], *,
                 cache: ResultCache | None = None, refresh: bool = False
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a model and load its trained weights from the cache, or train it once.

    ``build()`` makes the untrained model (deterministically); ``train(model)``
    trains it in place and may return JSON-able information (loss curve,
    timings) that is cached with the weights. Returns ``(model, info)``.
    """
    model = build()

    def compute() -> dict[str, Any]:
        info = dict(train(model) or {})
        clash = [k for k in info if k.startswith("state.")]
        if clash:
            raise ValueError(f"train() info keys must not start with 'state.': {clash}")
        state = {f"state.{k}": v for k, v in model.state_dict().items()}
        return {**info, **state}

    entry = cached(name, inputs, compute, cache=cache, refresh=refresh)
    state = {k[len("state."):]: v for k, v in entry.items() if k.startswith("state.")}
    model.load_state_dict(state)
    info = {k: v for k, v in entry.items() if not k.startswith("state.")}
    return model, info
