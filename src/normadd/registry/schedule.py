"""When a normality stops applying: reading ``--until`` (UTC, ISO 8601) and checking it is ahead."""

from __future__ import annotations

from datetime import UTC, datetime

from normadd.errors import NormaddError

UNTIL_EXAMPLE = "e.g. 2026-12-15T00:00:00Z or 2026-12-15"


def parse_until(text: str, now: datetime) -> str:
    """The ISO time (UTC, milliseconds) ``text`` names, which must lie after ``now``.

    A time without an offset is read as UTC; one with an offset is converted to UTC. A bare
    date means its midnight (UTC).

    Raises:
        NormaddError: Unparsable, or not after ``now``.
    """
    cleaned = text.strip()
    try:
        when = datetime.fromisoformat(cleaned[:-1] + "+00:00" if cleaned[-1:] in ("Z", "z") else cleaned)
    except ValueError:
        raise NormaddError(f"until '{text[:60]}' is not an ISO 8601 time ({UNTIL_EXAMPLE})") from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        ahead, current = when.isoformat(timespec="seconds"), now.isoformat(timespec="seconds")
        raise NormaddError(f"until {ahead} is not in the future (now {current}): give a later time")
    return when.isoformat(timespec="milliseconds")
