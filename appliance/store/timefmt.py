"""The one time format of the database: ISO-8601 UTC with microseconds and a Z, which sorts as text.

`now()` is the appliance's clock (appliance.clock): on the store thread the store's, in a serving
appliance's tasks the one serve() was handed, elsewhere the system's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from appliance import clock


def now() -> datetime:
    return clock.now()


def to_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_text() -> str:
    return to_text(now())


def from_text(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
