"""Placement constraints: a tiny expression language over a site's fields and labels.

One constraint is one string; a request carries a list of them and a site must
satisfy all (logical AND). Syntax::

    constraint := ["!"] subject [test]
    subject    := "region" | "name" | "id" | "label:" KEY
    test       := ("==" | "!=") VALUE
                | ["not"] "in" "(" VALUE {"," VALUE} ")"

A bare ``label:KEY`` (no test) means "the site has label KEY"; only labels may be
bare. A leading ``!`` negates the whole constraint. Spaces around operators are
allowed. KEY is ``[A-Za-z0-9][A-Za-z0-9_./-]*``; a VALUE is any run of characters
other than whitespace, ``,``, ``(``, ``)``, ``!`` and ``=``.

Examples: ``region==eu-west``, ``label:tier!=test``, ``label:gpu``,
``!label:maintenance``, ``label:zone in (a,b)``, ``name not in (edge-1, edge-2)``.

A missing label or an unset region never equals anything: ``label:tier==prod`` and
``label:tier in (a,b)`` fail on a site without ``tier``, while ``label:tier!=test``
and ``label:tier not in (a,b)`` pass (``!=`` is exactly the negation of ``==``).

:func:`parse_constraint` raises :class:`ValueError` so that pydantic validators
upstream can call it and turn a bad constraint into a 422.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudlet.placement.model import SiteCandidate

__all__ = ["FIELDS", "Constraint", "Op", "parse_constraint", "parse_constraints"]

#: Site fields a constraint may test, besides labels.
FIELDS: frozenset[str] = frozenset({"region", "name", "id"})

_KEY = r"[A-Za-z0-9][A-Za-z0-9_./-]*"
_VALUE = r"[^\s,()!=]+"
_SUBJECT_RE = re.compile(rf"(?:label:(?P<key>{_KEY})|(?P<field>[A-Za-z_]+))(?![A-Za-z0-9_./:-])")
_CMP_RE = re.compile(rf"(?P<op>==|!=)\s*(?P<value>{_VALUE})")
_IN_RE = re.compile(r"(?P<not>not\s+)?in\s*\((?P<list>[^()]*)\)")
_VALUE_RE = re.compile(_VALUE)
_MAX_LEN = 512


class Op(enum.StrEnum):
    """The test a constraint applies to its subject."""

    EXISTS = "exists"
    EQ = "=="
    NE = "!="
    IN = "in"
    NOT_IN = "not in"


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: a predicate over a :class:`SiteCandidate`.

    ``subject`` is ``"label"`` (then ``key`` names the label) or one of
    :data:`FIELDS`. ``str(constraint)`` gives back a canonical spelling.
    """

    subject: str
    op: Op
    key: str | None = None
    values: tuple[str, ...] = ()
    negated: bool = False

    def matches(self, site: SiteCandidate) -> bool:
        """Return whether ``site`` satisfies this constraint."""
        actual = self._actual(site)
        if self.op is Op.EXISTS:
            result = actual is not None
        elif self.op is Op.EQ:
            result = actual == self.values[0]
        elif self.op is Op.NE:
            result = actual != self.values[0]
        elif self.op is Op.IN:
            result = actual in self.values
        else:
            result = actual not in self.values
        return result != self.negated

    def _actual(self, site: SiteCandidate) -> str | None:
        if self.subject == "label":
            return site.labels.get(self.key or "")
        if self.subject == "region":
            return site.region
        if self.subject == "name":
            return site.name
        return site.site_id

    def __str__(self) -> str:
        subject = f"label:{self.key}" if self.subject == "label" else self.subject
        prefix = "!" if self.negated else ""
        if self.op is Op.EXISTS:
            return f"{prefix}{subject}"
        if self.op in (Op.EQ, Op.NE):
            return f"{prefix}{subject}{self.op.value}{self.values[0]}"
        return f"{prefix}{subject} {self.op.value} ({','.join(self.values)})"


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint string.

    Args:
        text: e.g. ``"region==eu-west"`` or ``"label:zone in (a,b)"``.

    Returns:
        The parsed :class:`Constraint`.

    Raises:
        ValueError: the text is not a valid constraint; the message quotes it and
            says what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"constraint must be a string, got {type(text).__name__}")
    if len(text) > _MAX_LEN:
        raise ValueError(f"constraint {text[:40]!r}... is longer than {_MAX_LEN} characters")
    rest = text.strip()
    if not rest:
        raise ValueError("empty constraint")
    negated = rest.startswith("!")
    if negated:
        rest = rest[1:].lstrip()
    m = _SUBJECT_RE.match(rest)
    if m is None:
        raise ValueError(
            f"bad constraint {text!r}: expected 'label:KEY' or one of "
            f"{', '.join(sorted(FIELDS))} at the start"
        )
    key = m.group("key")
    field = m.group("field")
    if field is not None and field not in FIELDS:
        raise ValueError(
            f"bad constraint {text!r}: unknown field {field!r} "
            f"(known: {', '.join(sorted(FIELDS))}, or label:KEY)"
        )
    subject = "label" if key is not None else field
    rest = rest[m.end() :].strip()
    if not rest:
        if subject != "label":
            raise ValueError(
                f"bad constraint {text!r}: field {subject!r} needs a test "
                "('==', '!=', 'in (...)' or 'not in (...)')"
            )
        return Constraint(subject=subject, op=Op.EXISTS, key=key, negated=negated)
    if m := _CMP_RE.fullmatch(rest):
        op = Op.EQ if m.group("op") == "==" else Op.NE
        return Constraint(subject, op, key, (m.group("value"),), negated)
    if m := _IN_RE.fullmatch(rest):
        values = _parse_list(text, m.group("list"))
        op = Op.NOT_IN if m.group("not") else Op.IN
        return Constraint(subject, op, key, values, negated)
    raise ValueError(
        f"bad constraint {text!r}: cannot read {rest!r}; expected '==VALUE', '!=VALUE', "
        "'in (A,B,...)' or 'not in (A,B,...)'"
    )


def _parse_list(text: str, inner: str) -> tuple[str, ...]:
    items = [item.strip() for item in inner.split(",")]
    if items == [""]:
        raise ValueError(f"bad constraint {text!r}: empty value list")
    values: list[str] = []
    for item in items:
        if not _VALUE_RE.fullmatch(item):
            raise ValueError(f"bad constraint {text!r}: bad value {item!r} in list")
        if item not in values:
            values.append(item)
    return tuple(values)


def parse_constraints(texts: Iterable[str | Constraint]) -> tuple[Constraint, ...]:
    """Parse a list of constraints (already parsed ones pass through).

    Raises:
        ValueError: at the first bad constraint, naming it.
    """
    return tuple(t if isinstance(t, Constraint) else parse_constraint(t) for t in texts)
