"""Groups as the admin API and the CLI change them, and how other parts hear that membership changed.

Membership lives in the store (appliance.store.groups: members, groups_of, changes_since). A part that
follows it (declarative management) keeps the id of the last change it handled and loops:

    while True:
        changed = runtime.group_changes.changed()     # take the event first: no change slips between
        for change in await runtime.store.read(groups.changes_since, last_id):
            ...                                        # change.group, change.device_id, change.joined
            last_id = change.id
        await changed.wait()
"""

from __future__ import annotations

import trio

from appliance.store import groups
from appliance.store.timefmt import now_text


class MembershipWatch:
    """runtime.group_changes: notify() after a commit that changed group membership."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        event, self._event = self._event, trio.Event()
        event.set()

    def changed(self) -> trio.Event:
        """An event set at the next notify()."""
        return self._event


async def _change(runtime, fn, *args, **kwargs):
    """Run a store function that may change membership; once it committed, tell the followers if it did."""
    result, changed = await runtime.store.write(_counting_changes, fn, args, {**kwargs, "now": now_text()})
    if changed:
        runtime.group_changes.notify()
    return result


def _counting_changes(conn, fn, args: tuple, kwargs: dict):
    before = groups.last_change_id(conn)
    result = fn(conn, *args, **kwargs)
    return result, groups.last_change_id(conn) != before


async def create(runtime, name: str, *, filter_text: str | None, description: str | None) -> dict:
    return await _change(runtime, groups.create, name, filter_text=filter_text, description=description)


async def update(runtime, name: str, *, filter_text: str | None, description: str | None) -> dict:
    return await _change(runtime, groups.update, name, filter_text=filter_text, description=description)


async def delete(runtime, name: str) -> int:
    return await _change(runtime, groups.delete, name)


async def add_members(runtime, name: str, device_ids: list[str]) -> int:
    return await _change(runtime, groups.add_members, name, device_ids)


async def remove_members(runtime, name: str, device_ids: list[str]) -> int:
    return await _change(runtime, groups.remove_members, name, device_ids)
