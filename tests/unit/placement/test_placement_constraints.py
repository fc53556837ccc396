"""Constraint parsing (good and bad) and matching semantics."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_fakes import make_request, make_site
from pydantic import BaseModel, ValidationError, field_validator

from cloudlet.errors import InvalidInputError
from cloudlet.placement import Constraint, Op, parse_constraint, parse_constraints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("region==eu-west", Constraint("region", Op.EQ, None, ("eu-west",))),
        ("label:tier!=test", Constraint("label", Op.NE, "tier", ("test",))),
        ("label:gpu", Constraint("label", Op.EXISTS, "gpu")),
        ("!label:maintenance", Constraint("label", Op.EXISTS, "maintenance", negated=True)),
        ("label:zone in (a,b)", Constraint("label", Op.IN, "zone", ("a", "b"))),
        ("label:zone in ( a , b , a )", Constraint("label", Op.IN, "zone", ("a", "b"))),
        ("name not in (edge-1, edge-2)", Constraint("name", Op.NOT_IN, None, ("edge-1", "edge-2"))),
        ("  id == s-1  ", Constraint("id", Op.EQ, None, ("s-1",))),
        ("! region == eu", Constraint("region", Op.EQ, None, ("eu",), negated=True)),
        ("label:k8s.io/zone==x:y", Constraint("label", Op.EQ, "k8s.io/zone", ("x:y",))),
        ("label:zone in(a)", Constraint("label", Op.IN, "zone", ("a",))),
    ],
)
def test_parse_good(text: str, expected: Constraint) -> None:
    parsed = parse_constraint(text)
    assert parsed == expected
    # The canonical spelling parses back to the same constraint.
    assert parse_constraint(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty constraint"),
        ("   ", "empty constraint"),
        ("foo==x", "unknown field 'foo'"),
        ("regionx==a", "unknown field 'regionx'"),
        ("region", "needs a test"),
        ("!name", "needs a test"),
        ("label:", "expected 'label:KEY'"),
        ("!", "expected 'label:KEY'"),
        ("==x", "expected 'label:KEY'"),
        ("region=x", "cannot read '=x'"),
        ("region==", "cannot read '=='"),
        ("region==a b", "cannot read"),
        ("label:a==b==c", "cannot read"),
        ("label:a in ()", "empty value list"),
        ("label:a in (a,,b)", "bad value ''"),
        ("label:a in (a b)", "bad value 'a b'"),
        ("label:zone in a,b", "cannot read"),
        ("label:zone in (a,b", "cannot read"),
        ("region ~= eu", "cannot read"),
        ("x" * 600, "longer than"),
    ],
)
def test_parse_bad_names_the_constraint(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="constraint") as info:
        parse_constraint(text)
    message = str(info.value)
    assert fragment in message
    if text.strip() and len(text) <= 512:
        assert repr(text) in message


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_constraint(42)  # type: ignore[arg-type]


def test_parse_constraints_passes_parsed_ones_through() -> None:
    c = parse_constraint("label:gpu")
    assert parse_constraints([c, "region==eu"]) == (c, parse_constraint("region==eu"))
    with pytest.raises(ValueError, match="'nope'"):
        parse_constraints(["label:gpu", "nope"])


def test_usable_from_a_pydantic_validator() -> None:
    class AppCreate(BaseModel):
        constraints: list[str]

        @field_validator("constraints")
        @classmethod
        def _check(cls, value: list[str]) -> list[str]:
            parse_constraints(value)
            return value

    assert AppCreate(constraints=["label:gpu"]).constraints == ["label:gpu"]
    with pytest.raises(ValidationError, match="unknown field 'zone'"):
        AppCreate(constraints=["zone==a"])


def test_request_parses_once_and_reports_bad_constraint_as_invalid_input() -> None:
    req = make_request(constraints=["region==eu-west", "label:gpu"])
    assert all(isinstance(c, Constraint) for c in req.constraints)
    assert req.parsed_constraints == req.constraints
    with pytest.raises(InvalidInputError, match="'label:zone in a'") as info:
        make_request(constraints=["label:gpu", "label:zone in a"])
    assert isinstance(info.value.__cause__, ValueError)


SITE = make_site(
    "edge-1", site_id="s-1", region="eu-west", labels={"tier": "prod", "gpu": "a100", "zone": "b"}
)
BARE = make_site("edge-2", region=None, labels={})


@pytest.mark.parametrize(
    ("text", "on_site", "on_bare"),
    [
        ("region==eu-west", True, False),
        ("region!=eu-west", False, True),
        ("region in (us-east,eu-west)", True, False),
        ("region not in (eu-west)", False, True),
        ("name==edge-1", True, False),
        ("id==s-1", True, False),
        ("id in (s-2, s-3)", False, False),
        ("label:tier==prod", True, False),
        ("label:tier!=test", True, True),  # a missing label is != anything
        ("label:tier!=prod", False, True),
        ("label:gpu", True, False),
        ("!label:gpu", False, True),
        ("!label:maintenance", True, True),
        ("label:zone in (a,b)", True, False),
        ("label:zone not in (a,b)", False, True),
        ("!label:zone in (a,b)", False, True),
        ("!region==eu-west", False, True),
    ],
)
def test_matches(text: str, on_site: bool, on_bare: bool) -> None:
    c = parse_constraint(text)
    assert c.matches(SITE) is on_site
    assert c.matches(BARE) is on_bare


_keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,8}", fullmatch=True)
_values = st.from_regex(r"[A-Za-z0-9_.:/@+-]{1,8}", fullmatch=True)


@st.composite
def constraints(draw: st.DrawFn) -> Constraint:
    subject = draw(st.sampled_from(["label", "region", "name", "id"]))
    key = draw(_keys) if subject == "label" else None
    ops = list(Op) if subject == "label" else [op for op in Op if op is not Op.EXISTS]
    op = draw(st.sampled_from(ops))
    if op is Op.EXISTS:
        values: tuple[str, ...] = ()
    elif op in (Op.EQ, Op.NE):
        values = (draw(_values),)
    else:
        values = tuple(draw(st.lists(_values, min_size=1, max_size=4, unique=True)))
    return Constraint(subject, op, key, values, draw(st.booleans()))


@settings(deadline=None)
@given(constraints())
def test_canonical_text_round_trips(c: Constraint) -> None:
    assert parse_constraint(str(c)) == c


@settings(deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    # Never any other exception: a bad constraint always reaches the caller as ValueError.
    with contextlib.suppress(ValueError):
        parse_constraint(text)
