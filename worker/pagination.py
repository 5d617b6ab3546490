"""A tenant's jobs a page at a time, newest first, with an opaque cursor."""

from __future__ import annotations

import base64
import json

import redis.asyncio

from worker.keys import Keys
from worker.records import JobRecord, JobStatus


def encode_cursor(score: float, job_id: str) -> str:
    raw = json.dumps([score, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError for a cursor this service did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, job_id = json.loads(raw)
        if not isinstance(job_id, str) or not isinstance(score, (int, float)):
            raise TypeError
        return float(score), job_id
    except (ValueError, TypeError) as error:
        raise ValueError("cursor: not a cursor from a previous page") from error


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
