"""/v1/usage: a project's metered usage over a period and its cost under the price sheet."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query

from cloudlet.controller.api.deps import DB, User
from cloudlet.controller.services import usage_report
from cloudlet.controller.services._util import utcnow
from cloudlet.controller.services.projects import require_project
from cloudlet.errors import ForbiddenError, InvalidInputError
from cloudlet.schemas.common import IsoDatetime
from cloudlet.schemas.metering import UsageReport

router = APIRouter(prefix="/v1/usage", tags=["usage"])

#: Reports cover years 2000 to 9998 (UTC): wide enough, and far from the ends of
#: what datetimes hold (a bound an hour off would overflow).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _utc(value: datetime, name: str) -> datetime:
    try:
        when = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        when = None
    if when is None or not EARLIEST <= when < LATEST:
        raise InvalidInputError(f"{name} must be between {EARLIEST.year} and {LATEST.year - 1}")
    return when


@router.get("", response_model=UsageReport, response_model_by_alias=True)
def usage(
    session: DB,
    user: User,
    project: str = Query(
        ..., min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$", description="The project."
    ),
    since: IsoDatetime = Query(
        ..., alias="from", description="Start of the period (UTC unless an offset is given)."
    ),
    until: IsoDatetime = Query(..., alias="to", description="End of the period (excluded)."),
    as_of: IsoDatetime | None = Query(
        None,
        description="Count only records that had arrived by then (default: now): the "
        "report exactly as it was at that moment.",
    ),
) -> UsageReport:
    """Per app and site: instance-, vCPU- and GiB-hours and their cost; the bytes of the
    project's images and overlays sent to sites; a total per currency; and the records
    that arrived after the period ended (late). Members and readers see their own
    project; admins any."""
    if user.role != "admin" and project != user.project:
        raise ForbiddenError(f"your token may read the usage of project {user.project!r} only")
    start, end = _utc(since, "from"), _utc(until, "to")
    if end <= start:
        raise InvalidInputError("to must be after from")
    now = utcnow()
    taken = min(_utc(as_of, "as_of"), now) if as_of is not None else now
    require_project(session, project)
    return usage_report.build_report(session, project, start, end, taken)
