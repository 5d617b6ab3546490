"""A tenant's jobs a page at a time, newest first, with a cursor: where the next page starts."""

from __future__ import annotations

import re

import redis.asyncio

from worker.keys import Keys
from worker.records import JobRecord, JobStatus

CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9]{1,17}_[A-Za-z0-9]{1,64}$"
"""A cursor: the creation time of the last job of a page (seconds, as Python writes the float)
and its id. Any cursor of this shape is a position in the list; the page after it starts
with the next older job."""


def encode_cursor(score: float, job_id: str) -> str:
    return f"{score!r}_{job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(creation time, job id). Raises ValueError for a cursor not of CURSOR_PATTERN's shape."""
    if not re.match(CURSOR_PATTERN, cursor):
        raise ValueError("cursor: not a cursor from a previous page")
    score, _, job_id = cursor.partition("_")
    return float(score), job_id


async def page(
    client: redis.asyncio.Redis, keys: Keys, tenant: str, *, status: JobStatus | None = None,
    limit: int = 20, cursor: str | None = None,
) -> tuple[list[JobRecord], str | None]:
    """A page of the tenant's jobs, newest first, and the cursor of the next page (or None).

    Jobs with equal creation times are ordered by id, so a cursor (score, id) never skips or
    repeats one. Ids whose record expired leave the index as they are met.
    """
    key = keys.tenant_jobs(tenant)
    after = decode_cursor(cursor) if cursor else None
    max_score: float | str = "+inf" if after is None else after[0]
    found: list[tuple[JobRecord, float]] = []
    offset, batch = 0, max(limit * 2, 50)
    more = False
    while not more:
        rows: list[tuple[bytes, float]] = await client.zrevrangebyscore(  # type: ignore[assignment]
            key, max_score, "-inf", start=offset, num=batch, withscores=True
        )
        if not rows:
            break
        offset += len(rows)
        raws = await client.mget([keys.job(member.decode()) for member, _ in rows])
        for (member, score), raw in zip(rows, raws, strict=True):
            job_id = member.decode()
            if after is not None and score == after[0] and job_id >= after[1]:
                continue
            if raw is None:
                await client.zrem(key, member)
                offset -= 1
                continue
            record = JobRecord.model_validate_json(raw)
            if status is not None and record.status != status:
                continue
            if len(found) == limit:
                more = True
                break
            found.append((record, score))
        if len(rows) < batch:
            break
    next_cursor = encode_cursor(found[-1][1], found[-1][0].id) if more and found else None
    return [record for record, _ in found], next_cursor
