"""When a certificate is renewed, and how long a renewal attempt is given: sans-I/O arithmetic on dates.

Renewal starts when less than `renew_before` is left, or half the certificate's lifetime, whichever comes
later in its life: a year-long identity renews 30 days before it ends (as Fleet does), a day-long one at
noon, so a short-lived certificate never renews in a loop. Attempts that do not complete (the device
answered NotNow or Error, or never came) are replaced by new ones after a wait that doubles up to a cap.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def renewal_starts(not_before: datetime, not_after: datetime, renew_before: timedelta) -> datetime:
    """The moment renewal of a certificate valid from not_before to not_after begins."""
    halfway = not_before + (not_after - not_before) / 2
    return max(not_after - renew_before, halfway)


def retry_after(attempt: int, initial: timedelta, cap: timedelta) -> timedelta:
    """How long attempt number `attempt` (1, 2, ...) is given before the next one replaces it."""
    if attempt < 1:
        raise ValueError("attempts are counted from 1")
    return min(cap, initial * 2 ** min(attempt - 1, 32))
