"""The constraint pattern the OpenAPI document publishes admits only what placement parses."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlet.placement import parse_constraint
from cloudlet.schemas.apps import CONSTRAINT_PATTERN


@settings(max_examples=300)
@given(st.from_regex(CONSTRAINT_PATTERN))
def test_every_string_the_pattern_admits_parses(text: str) -> None:
    if len(text) <= 253 and re.fullmatch(CONSTRAINT_PATTERN, text):  # 253: the API's bound
        parse_constraint(text)


def test_the_documented_examples_match() -> None:
    for text in (
        "region==eu-west",
        "label:tier!=test",
        "label:gpu",
        "!label:maintenance",
        "label:zone in (a,b)",
        "name not in (edge-1, edge-2)",
    ):
        assert re.fullmatch(CONSTRAINT_PATTERN, text), text
    for text in ("region", "label:zonein(a)", "0000", "label:a==b==c"):
        assert not re.fullmatch(CONSTRAINT_PATTERN, text), text
