import json
import warnings

import pytest
import torch

from lamini_lite.cache import (CacheCorruptedError, ResultCache, cache_key, cached, cached_model,
                               fingerprint)


def test_round_trip_tensors_and_json(tmp_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.arange(6.0).reshape(2, 3), "acc": 0.5, "names": ["a", "b"]}

    first = cached("demo", {"seed": 0, "n": 3}, compute)
    second = cached("demo", {"seed": 0, "n": 3}, compute)
    assert len(calls) == 1
    assert torch.equal(second["w"], torch.arange(6.0).reshape(2, 3))
    assert second["acc"] == 0.5 and second["names"] == ["a", "b"]
    assert list(first) == ["w", "acc", "names"]


def test_key_changes_with_inputs(tmp_cache):
    assert cache_key("x", {"seed": 0}) != cache_key("x", {"seed": 1})
    assert cache_key("x", {"seed": 0}) != cache_key("y", {"seed": 0})
    assert cache_key("x", {"a": 1, "b": 2}) == cache_key("x", {"b": 2, "a": 1})
    a = cached("demo", {"seed": 0}, lambda: {"v": 0})
    b = cached("demo", {"seed": 1}, lambda: {"v": 1})
    assert (a["v"], b["v"]) == (0, 1)
    # The first entry was not overwritten by the second.
    assert cached("demo", {"seed": 0}, lambda: {"v": 99})["v"] == 0


def test_corrupted_entry_is_detected_and_recomputed(tmp_cache):
    cached("demo", {"seed": 0}, lambda: {"w": torch.ones(4)})
    cache = ResultCache()
    folder = cache.path("demo", {"seed": 0})
    data = bytearray((folder / "tensors.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CacheCorruptedError, match="checksum"):
        cache.load("demo", {"seed": 0})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = cached("demo", {"seed": 0}, lambda: {"w": torch.zeros(4)})
    assert any("corrupted" in str(x.message) for x in w)
    assert torch.equal(res["w"], torch.zeros(4))


def test_tampered_inputs_are_detected(tmp_cache):
    cached("demo", {"seed": 0}, lambda: {"v": 1})
    cache = ResultCache()
    meta_path = cache.path("demo", {"seed": 0}) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["inputs"]["seed"] = 7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheCorruptedError, match="inputs differ"):
        cache.load("demo", {"seed": 0})


def test_save_never_silently_overwrites(tmp_cache):
    cache = ResultCache()
    cache.save("demo", {"seed": 0}, {"v": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cache.save("demo", {"seed": 0}, {"v": 2})
    assert cache.load("demo", {"seed": 0})["v"] == 1
    cache.save("demo", {"seed": 0}, {"v": 2}, overwrite=True)
    assert cache.load("demo", {"seed": 0})["v"] == 2


def test_bad_inputs_and_results_are_clear_errors(tmp_cache):
    with pytest.raises(TypeError, match="JSON-able"):
        cache_key("x", {"f": object()})
    with pytest.raises(ValueError, match="plain word"):
        ResultCache().path("a/b", {})
    with pytest.raises(TypeError, match="JSON-able"):
        cached("demo", {"seed": 3}, lambda: {"v": object()})


def test_fingerprint_tracks_content():
    a = torch.nn.Linear(3, 2)
    fa = fingerprint(a)
    with torch.no_grad():
        a.weight[0, 0] += 1
    assert fingerprint(a) != fa
    assert fingerprint(torch.ones(3)) == fingerprint(torch.ones(3))
    assert fingerprint(torch.ones(3)) != fingerprint(torch.ones(3, dtype=torch.float64))
    assert fingerprint({"a": [1, 2]}) == fingerprint({"a": [1, 2]})


def test_cached_model_trains_once(tmp_cache):
    trained = []

    def build():
        torch.manual_seed(0)
        return torch.nn.Linear(2, 2)

    def train(m):
        trained.append(1)
        with torch.no_grad():
            m.weight.fill_(3.0)
        return {"loss": [1.0, 0.5]}

    m1, info1 = cached_model("lin", {"seed": 0}, build, train)
    m2, info2 = cached_model("lin", {"seed": 0}, build, train)
    assert len(trained) == 1
    assert torch.equal(m2.weight, torch.full((2, 2), 3.0))
    assert info2 == {"loss": [1.0, 0.5]}


def test_atomic_directory_keeps_a_concurrent_writers_entry(tmp_path, monkeypatch):
    from lamini_lite import cache as cache_mod

    target = tmp_path / "entry"
    real_replace = cache_mod.os.replace

    def racing_replace(src, dst):
        # Simulate another process finishing first.
        if not target.exists():
            target.mkdir()
            (target / "theirs").write_text("x")
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", racing_replace)
    with cache_mod.atomic_directory(target) as tmp:
        (tmp / "ours").write_text("y")
    assert (target / "theirs").exists() and not (target / "ours").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no temp folder left


def test_atomic_directory_removes_temp_on_error(tmp_path):
    from lamini_lite.cache import atomic_directory

    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "entry") as tmp:
            (tmp / "f").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
