import pytest

from lamini_lite import profiles
from lamini_lite.profiles import active_profile, register_sizes, sizes


def test_default_profile_is_book(monkeypatch):
    monkeypatch.delenv("LAMINI_LITE_PROFILE", raising=False)
    assert active_profile() == "book"


@pytest.mark.parametrize("name", ["ci", "book", "full"])
def test_profiles_selected_by_env(monkeypatch, name):
    monkeypatch.setenv("LAMINI_LITE_PROFILE", name)
    assert active_profile() == name


def test_wrong_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("LAMINI_LITE_PROFILE", "huge")
    with pytest.raises(ValueError, match="'huge'.*ci, book, full"):
        active_profile()


def test_sizes_follow_active_profile(monkeypatch):
    register_sizes("_test_section", ci={"n": 1}, book={"n": 10}, full={"n": 100})
    monkeypatch.setenv("LAMINI_LITE_PROFILE", "ci")
    assert sizes("_test_section").n == 1
    monkeypatch.setenv("LAMINI_LITE_PROFILE", "full")
    assert sizes("_test_section")["n"] == 100
    assert sizes("_test_section", profile="book").n == 10
    assert dict(sizes("_test_section", "book")) == {"n": 10}


def test_sizes_are_read_only_and_name_missing_fields():
    register_sizes("_test_ro", ci={"a": 1}, book={"a": 2}, full={"a": 3})
    s = sizes("_test_ro", "ci")
    with pytest.raises(AttributeError, match="read-only"):
        s.a = 5
    with pytest.raises(AttributeError, match="no field 'b'"):
        _ = s.b


def test_register_requires_same_fields():
    with pytest.raises(ValueError, match="same fields"):
        register_sizes("_test_bad", ci={"a": 1}, book={"a": 1, "b": 2}, full={"a": 1})


def test_unknown_section_is_clear_error():
    with pytest.raises(KeyError, match="no sizes registered for section 'nope'"):
        sizes("nope", "ci")
    assert "_test_bad" not in profiles.registered_sections()
