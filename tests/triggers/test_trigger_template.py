"""Input templates: whole placeholders keep JSON types, embedded ones render as text."""

from __future__ import annotations

from typing import Any

import pytest

from tracemind.triggers.template import is_valid_name, placeholders, render

CONTEXT: dict[str, Any] = {
    "body": {"id": 42, "items": [{"sku": "a-1"}, {"sku": "b-2"}], "note": None, "ok": True},
    "name": "report.json",
    "size": 1024,
    "query": {"tag": ["x", "y"]},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ body }}", CONTEXT["body"]),
        ("{{body.id}}", 42),
        ("  {{ body.ok }} ", True),
        ("{{ body.items }}", [{"sku": "a-1"}, {"sku": "b-2"}]),
        ("{{ body.items.1.sku }}", "b-2"),
        ("{{ query.tag }}", ["x", "y"]),
        ("{{ size }}", 1024),
        ("{{ missing }}", None),
        ("{{ body.missing.deeper }}", None),
        ("{{ body.items.9 }}", None),
    ],
)
def test_a_whole_value_placeholder_keeps_its_json_type(template: str, expected: Any) -> None:
    assert render(template, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("file {{ name }} ({{ size }} bytes)", "file report.json (1024 bytes)"),
        ("order={{ body.id }}", "order=42"),
        ("b={{ body }}", 'b={"id":42,"items":[{"sku":"a-1"},{"sku":"b-2"}],"note":null,"ok":true}'),
        ("note={{ body.note }}, gone={{ nope }}", "note=null, gone=null"),
        ("{{ name }}{{ size }}", "report.json1024"),
        ("no placeholders", "no placeholders"),
    ],
)
def test_placeholders_inside_text_render_as_json_text(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected


def test_nested_structures_are_rendered_and_other_values_kept() -> None:
    template = {
        "order": "{{ body }}",
        "tags": ["{{ query.tag }}", "t-{{ size }}"],
        "n": 3,
        "f": None,
    }
    assert render(template, CONTEXT) == {
        "order": CONTEXT["body"],
        "tags": [["x", "y"], "t-1024"],
        "n": 3,
        "f": None,
    }


def test_rendering_does_not_mutate_the_template() -> None:
    template = {"a": "{{ size }}"}
    render(template, CONTEXT)
    assert template == {"a": "{{ size }}"}


def test_placeholders_lists_locations() -> None:
    template = {"a": "{{ x }}", "b": ["{{ y.z }} and {{ w }}"], "c": 1}
    assert list(placeholders(template)) == [
        ("input.a", "x"),
        ("input.b[0]", "y.z"),
        ("input.b[0]", "w"),
    ]


def test_name_syntax() -> None:
    assert is_valid_name("body.order-id.0")
    assert not is_valid_name("a b")
    assert not is_valid_name("")
    assert not is_valid_name("body..id")
    assert render("{{ a b }}", {"a": 1}) is None
