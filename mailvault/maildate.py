"""Date header values to UTC datetimes, for the parser and the exporters alike.

Parsing a Date the way ``email.utils.parsedate_to_datetime`` does costs a few microseconds per
message, noticeable when every message of an archive is parsed or exported; the form nearly
every message uses is read directly, with the same result, and anything else goes the long way.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime, timedelta

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# RFC 5322 3.3 without comments or obsolete zones.
_COMMON_DATE = re.compile(
    r"(?:[A-Z][a-z]{2}, ?)?(\d{1,2}) ([A-Z][a-z]{2}) ([1-9]\d{3}) "
    r"(\d\d):(\d\d):(\d\d) ([+-])([01]\d|2[0-3])([0-5]\d)",
    re.ASCII,
)
_MONTH_NUMBERS = {name: number for number, name in enumerate(MONTHS, 1)}


def parse_date(value: str) -> datetime | None:
    """A Date header value as an aware UTC datetime, or None if it cannot be read.

    The same result as ``email.utils.parsedate_to_datetime`` (``-0000``, "zone unknown", read
    as UTC), which handles every form the fast pattern does not, except that a year written
    with four digits is that year (``0001`` is 1, not 2001: see ``_PADDED_YEAR``).
    """
    match = _COMMON_DATE.fullmatch(value)
    month = _MONTH_NUMBERS.get(match.group(2)) if match else None
    if match is not None and month is not None:
        day, _, year, hour, minute, second, sign, off_h, off_m = match.groups()
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        try:
            local = datetime(
                int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=UTC
            )
            return local - offset if sign == "+" else local + offset
        except (ValueError, OverflowError):
            pass  # the long way decides (and refuses it too)
    padded = _PADDED_YEAR.search(value)
    if padded is not None:  # 0001: the year 1, not 2001 (see _PADDED_YEAR)
        start, end = padded.span("year")
        value = f"{value[:start]}{int(padded.group('year')) + _CYCLE}{value[end:]}"
    else:
        two = _TWO_DIGIT_YEAR.search(value)
        if two is not None and 50 <= int(two.group("year")) <= 68:  # 1950..1968 (see above)
            start, end = two.span("year")
            value = f"{value[:start]}19{two.group('year')}{value[end:]}"
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    try:
        date = date.astimezone(UTC)
        # moved back in UTC: 31 Dec 0000 23:00 -0500 is a day of the year 1
        return date if padded is None else date.replace(year=date.year - _CYCLE)
    except (OverflowError, ValueError):
        return None


# A year written with four digits below 100 (``01 Jan 0001``): the email package reads any
# year below 100 as two-digit (0001 became 2001, 0099 1999), but only a year written with two
# digits is one (RFC 5322 4.3).  It is parsed as the year 2400 later, which has the same
# calendar (leap years, weekdays: the Gregorian calendar repeats every 400 years), and moved
# back.  The year follows the month (``1 Jan 0001``), or the month and day (``Jan 1 0001``, as
# asctime writes it); a zone written without its sign (``0000``) is none.
_PADDED_YEAR = re.compile(
    r"\b(?:" + "|".join(MONTHS) + r")[a-z]*\.?\s+(?:\d{1,2}\s+)?(?P<year>00\d\d)\b",
    re.ASCII | re.IGNORECASE,
)
_CYCLE = 2400

# A year written with two digits: RFC 5322 4.3 adds 2000 to 00..49 and 1900 to 50..99; the
# email package adds 1900 only from 69 (POSIX's rule), so 50..68 would be read 100 years late.
# The year follows the month and comes before the time (``1 Jan 50 10:00:00 +0000``).
_TWO_DIGIT_YEAR = re.compile(
    r"\b(?:" + "|".join(MONTHS) + r")[a-z]*\.?\s+(?P<year>\d\d)(?=\s+\d{1,2}:)",
    re.ASCII | re.IGNORECASE,
)
