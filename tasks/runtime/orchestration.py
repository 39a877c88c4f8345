"""When the Prefect API itself fails under a run: ride out a short outage of its database, and name a long one.

A Prefect server whose PostgreSQL is restarting (a crash, an upgrade, a failover) stays up and answers every
call with 500 Internal Server Error until it reconnects. Prefect's client retries only 429, 502 and 503, so
without help the first state change of the outage ends the run with a traceback (tests/integration/
test_faults.py: 15 s after the database went away). `RETRY_EXTRA_CODES` adds 500 to the retried codes: the
client's 5 retries back off 2 + 4 + ... + 32 s, about a minute, which a restarting database fits in.
Retrying is safe for this cause (the database was away, so nothing was written) and Prefect's own calls
carry ids for what they create or transition. A longer outage still fails: `orchestration_message` makes it
the one `error:` line a person reads, and the rerun resumes like any other (finished units are kept).
"""
from __future__ import annotations

import os

from ...storage.errors import cause_chain

RETRY_EXTRA_CODES = "500"  # PREFECT_CLIENT_RETRY_EXTRA_CODES: on top of Prefect's own 429, 502, 503
RETRY_ENV = "PREFECT_CLIENT_RETRY_EXTRA_CODES"


def ride_out_database_restarts() -> None:
    """Have Prefect's client retry the 500s of a server whose database is away (before prefect is imported;
    an operator's own PREFECT_CLIENT_RETRY_EXTRA_CODES wins)."""
    os.environ.setdefault(RETRY_ENV, RETRY_EXTRA_CODES)


def _http_failure(exc: BaseException):
    """The Prefect API error (5xx after the client's retries, or no answer) in `exc`'s chain, else None."""
    import httpx

    for e in cause_chain(exc):
        if isinstance(e, httpx.HTTPStatusError) and e.response.status_code >= 500:
            return e
        if isinstance(e, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            return e
    return None


def orchestration_message(exc: BaseException) -> str | None:
    """The `error:` line of a run that lost its Prefect API (server or its database away past the client's
    retries), or None when `exc` is something else."""
    failure = _http_failure(exc)
    if failure is None:
        return None
    request = getattr(failure, "request", None)
    url = str(request.url) if request is not None else "the Prefect API"
    what = (f"answered HTTP {failure.response.status_code}" if hasattr(failure, "response")
            else f"did not answer ({type(failure).__name__})")
    return (f"the Prefect API at {url.split('/api/')[0]}/api {what} after the client's retries (~1 min): "
            "its server or the server's database is down or restarting. The round in progress is not "
            "committed; once `prefect server` answers /api/health again, rerun: finished units are kept.")
