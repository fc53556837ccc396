"""The provider's price sheet: a default plan, plans per project and per app.

A plan is stored under (project, app), '' standing for "any": ('', '') is the
default, (P, '') project P's, (P, A) app A of P's. The most specific one prices a
line: app, then project, then default; with none at all nothing is charged.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cloudlet.controller.db.models import PricePlan as PlanRow
from cloudlet.controller.services._metering import NO_PLAN, Prices
from cloudlet.controller.services._util import utcnow
from cloudlet.schemas.metering import PRICED, PlanRef, PricePlan, PricePlanSet

ANY = ""


def to_wire(row: PlanRow) -> PricePlan:
    return PricePlan(
        project=row.project or None,
        app=row.app or None,
        currency=row.currency,
        free=row.free,
        updated_at=row.updated_at,
        **{k: Decimal(getattr(row, k)) for k in PRICED},
    )


def set_plan(session: Session, project: str, app: str, body: PricePlanSet) -> PlanRow:
    """Set (create or replace) the plan of one scope."""
    row = session.get(PlanRow, (project, app))
    if row is None:
        row = PlanRow(project=project, app=app)
        session.add(row)
    row.currency = body.currency
    row.free = body.free
    for k in PRICED:
        setattr(row, k, format(getattr(body, k).normalize(), "f"))
    row.updated_at = utcnow()
    session.flush()
    return row


def get_plan(session: Session, project: str, app: str) -> PlanRow | None:
    return session.get(PlanRow, (project, app))


def delete_plan(session: Session, project: str, app: str) -> bool:
    """Drop the plan of one scope; False if it had none."""
    row = session.get(PlanRow, (project, app))
    if row is None:
        return False
    session.delete(row)
    return True


def list_plans(session: Session, project: str | None = None) -> list[PlanRow]:
    """The whole sheet, or (given a project) the plans that may apply to it."""
    query = select(PlanRow).order_by(PlanRow.project, PlanRow.app)
    if project is not None:
        query = query.where(or_(PlanRow.project == ANY, PlanRow.project == project))
    return list(session.scalars(query))


class Sheet:
    """The plans that may price one project's report, resolved most specific first."""

    def __init__(self, session: Session, project: str) -> None:
        self._plans = {(r.project, r.app): r for r in list_plans(session, project)}
        self._project = project

    def _pick(self, app: str | None) -> tuple[str, PlanRow | None]:
        keys = [("project", (self._project, ANY)), ("default", (ANY, ANY))]
        if app is not None:
            keys.insert(0, ("app", (self._project, app)))
        for scope, key in keys:
            if key in self._plans:
                return scope, self._plans[key]
        return "none", None

    def prices(self, app: str | None) -> tuple[PlanRef, Prices]:
        """The plan for ``app`` (None: the project's own, for bytes fetched)."""
        scope, row = self._pick(app)
        if row is None:
            return PlanRef(scope=scope, currency=None, free=True), NO_PLAN
        prices = Prices(
            currency=row.currency,
            free=row.free,
            **{k: Decimal(getattr(row, k)) for k in PRICED},
        )
        return PlanRef(scope=scope, currency=row.currency, free=row.free), prices
