"""Finding and replacing lone surrogates in decoded JSON."""

from __future__ import annotations

import json

from lightspeed_collector.surrogates import (
    find_surrogate,
    may_hold_surrogates,
    replace_surrogates,
)


def test_only_surrogate_escapes_make_a_body_suspect() -> None:
    assert may_hold_surrogates(b'{"q": "\\ud800"}')
    assert may_hold_surrogates(b'{"q": "\\uDBFF\\uDC00"}')
    assert not may_hold_surrogates(b'{"q": "\\u00e9 \\u4e2d \\ud7ff"}')
    assert not may_hold_surrogates('{"q": "é 😀"}'.encode())


def test_find_reports_the_path_and_whether_a_key_holds_it() -> None:
    body = json.loads('{"a": "ok", "b": ["x", {"c": "y\\ud800"}]}')
    assert find_surrogate(body, ("body",)) == (("body", "b", 1, "c"), "\ud800", False)
    keyed = json.loads('{"ok": {"\\udfff": 1}}')
    assert find_surrogate(keyed, ("body",)) == (("body", "ok"), "\udfff", True)
    assert find_surrogate(json.loads('{"a": "\\ud83d\\ude00"}')) is None


def test_find_walks_any_depth_json_can_decode() -> None:
    deep = json.loads("[" * 900 + '"\\ud800"' + "]" * 900)
    found = find_surrogate(deep)
    assert found is not None
    assert found[0] == (0,) * 900


def test_replace_copies_only_what_changes() -> None:
    clean = {"a": ["fine", {"b": "😀"}], "n": 1}
    assert replace_surrogates(clean) is clean
    dirty = {"a": ("x\ud83d", "y"), "k\udc00": None, "n": 1}
    assert replace_surrogates(dirty) == {"a": ("x\ufffd", "y"), "k\ufffd": None, "n": 1}
    assert dirty["a"] == ("x\ud83d", "y")  # the original is left alone
