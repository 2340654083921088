"""Times as lmforge writes and reads them: aware datetimes, written in UTC.

A workspace outlives a time zone: a scheduled retrain runs on a worker set to UTC, a person
starts runs from a laptop in Paris, and a clock falls back an hour each autumn. Local times
written by each would sort runs wrongly, shift `--since` by the offset and let a crashed run
end before it started. So every time lmforge stores (the registry's TIMESTAMPTZ columns, the
stage journal, metrics files, pending outcomes) is an instant, and it is shown in the local
time of whoever reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime

SHOWN_TIME = "%Y-%m-%d %H:%M:%S"  # to the second, as `lmforge runs` shows times


def utc_now() -> datetime:
    """Now, as an aware datetime in UTC."""
    return datetime.now(UTC)


def read_time(text: str) -> datetime:
    """An ISO time lmforge wrote, as an aware datetime. A time without an offset was written
    before lmforge wrote UTC (December 2026), in its writer's local time: it is read as this
    machine's local time, the best guess there is. Raises ValueError for text that is not one."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.astimezone()


def file_time(seconds: float) -> datetime:
    """A file's modification time (`st_mtime`), as an aware datetime in UTC."""
    return datetime.fromtimestamp(seconds, UTC)


def shown_time(value: datetime, zone: bool = False) -> str:
    """`value` in this machine's local time, to the second; a naive value (a registry from
    before lmforge wrote UTC) is shown as it is: it was local time already. With `zone`, the
    local time's offset from UTC follows (`+05:30`), for what is read elsewhere: a report
    sent from Kolkata to Paris gave a time each read as their own."""
    if value.tzinfo is None:
        return f"{value:{SHOWN_TIME}}"
    value = value.astimezone()
    if not zone:
        return f"{value:{SHOWN_TIME}}"
    minutes = round(value.utcoffset().total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{value:{SHOWN_TIME}} {sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
