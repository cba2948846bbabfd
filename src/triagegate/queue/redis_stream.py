"""The ticket stream on Redis: entry format, consumer-group reads, reclaiming, dead letters.

An entry is either ``{"ticket": <Ticket JSON>}``, a person's answer to a handoff
``{"resume": <thread id>, "answer": <HumanAnswer JSON>}``, or, for a row that was bad at
enqueue time and pushed on purpose, ``{"poison": <raw row>, "reason": ...}``. Related keys hang
off the stream name: ``<stream>:dead`` (the dead-letter stream), ``<stream>:errors``
(last processing error per entry id, so a dead letter can say why) and
``<stream>:stats:<group>`` (per-consumer counters the workers publish for
``queue status``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from triagegate.types import HumanAnswer, Ticket

TICKET_FIELD = "ticket"
RESUME_FIELD = "resume"
ANSWER_FIELD = "answer"
POISON_FIELD = "poison"
REASON_FIELD = "reason"
ENQUEUE_CHUNK = 500
DEAD_LETTER_SCRIPT = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""
"""Ack an entry and, only if that ack took effect, add its dead letter (KEYS: stream, dead, errors)."""


class PoisonEntry(Exception):
    """An entry that can never become a ticket; it goes to the dead-letter stream on first sight."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[str, str]
    deliveries: int = 1

    @property
    def is_resume(self) -> bool:
        return RESUME_FIELD in self.fields

    def resume(self) -> tuple[str, HumanAnswer]:
        """The thread and answer of a resume entry; raises :class:`PoisonEntry` when they do not validate."""
        thread = self.fields.get(RESUME_FIELD, "")
        try:
            answer = HumanAnswer.model_validate_json(self.fields.get(ANSWER_FIELD, ""))
        except ValueError as exc:
            raise PoisonEntry(
                f"resume entry's answer does not validate: {str(exc).splitlines()[0]}"
            ) from None
        if not thread:
            raise PoisonEntry("resume entry names no thread")
        return thread, answer

    def ticket(self) -> Ticket:
        """The entry's ticket; raises :class:`PoisonEntry` when it has none or it does not validate."""
        if POISON_FIELD in self.fields:
            raise PoisonEntry(
                f"bad row pushed as poison at enqueue: {self.fields.get(REASON_FIELD, 'no reason given')}"
            )
        raw = self.fields.get(TICKET_FIELD)
        if raw is None:
            raise PoisonEntry(
                f"entry has no {TICKET_FIELD!r} field (fields: {', '.join(sorted(self.fields)) or 'none'})"
            )
        try:
            return Ticket.model_validate_json(raw)
        except ValueError as exc:
            raise PoisonEntry(f"entry's ticket does not validate: {str(exc).splitlines()[0]}") from None


def connect(url: str) -> aioredis.Redis:
    """A client with string replies and a pool large enough for a worker's concurrent acks."""
    client: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
    return client


def _entries(raw: Iterable[Any], deliveries: dict[str, int] | None = None) -> list[Entry]:
    out = []
    for item in raw:
        entry_id, fields = item[0], item[1]
        if fields is None:
            continue
        out.append(Entry(entry_id, dict(fields), (deliveries or {}).get(entry_id, 1)))
    return out


class TicketStream:
    """One stream and (for consumers) one consumer group on it."""

    def __init__(self, redis: aioredis.Redis, stream: str, group: str = "triagegate") -> None:
        if not stream:
            raise ValueError("the stream name must not be empty")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.dead = f"{stream}:dead"
        self.errors = f"{stream}:errors"
        self.stats = f"{stream}:stats:{group}"

    async def add_tickets(self, tickets: Sequence[Ticket]) -> list[str]:
        return await self._add([{TICKET_FIELD: t.model_dump_json()} for t in tickets])

    async def add_resume(self, thread_id: str, answer: HumanAnswer) -> str:
        """Queue a person's answer to the handoff on ``thread_id`` for a worker to apply."""
        return (await self._add([{RESUME_FIELD: thread_id, ANSWER_FIELD: answer.model_dump_json()}]))[0]

    async def add_poison(self, raw: str, reason: str) -> str:
        return (await self._add([{POISON_FIELD: raw, REASON_FIELD: reason}]))[0]

    async def _add(self, entries: list[dict[str, str]]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(entries), ENQUEUE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for fields in entries[start : start + ENQUEUE_CHUNK]:
                    pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
                ids.extend(await pipe.execute())
        return ids

    async def ensure_group(self) -> None:
        """Create the group reading from the stream's start (so entries enqueued earlier count); idempotent."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for ``consumer`` (``>``), waiting up to ``block_ms`` when there are none."""
        reply: Any = await self.redis.xreadgroup(
            self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [e for _, raw in reply or () for e in _entries(raw)]

    async def read_own_pending(self, consumer: str, count: int) -> list[Entry]:
        """Entries already delivered to ``consumer`` and not acknowledged (a restart under the same name)."""
        reply: Any = await self.redis.xreadgroup(self.group, consumer, {self.stream: "0"}, count=count)
        entries = [e for _, raw in reply or () for e in _entries(raw)]
        return await self._with_deliveries(entries, consumer)

    async def claim(
        self, consumer: str, min_idle_ms: int, count: int, start: str = "0-0"
    ) -> tuple[str, list[Entry]]:
        """XAUTOCLAIM entries idle at least ``min_idle_ms``; returns the next cursor and the entries,
        each with its delivery count (this delivery included). Entries deleted from the stream
        while pending are acknowledged, since there is nothing left to process."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, consumer, min_idle_ms, start_id=start, count=count
        )
        cursor, raw = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            await self.redis.xack(self.stream, self.group, *deleted)
        return cursor, await self._with_deliveries(_entries(raw), consumer)

    async def _with_deliveries(
        self, entries: list[Entry], consumer: str, *, only_owned: bool = False
    ) -> list[Entry]:
        """``entries`` with their delivery counts from the pending list of ``consumer``
        (with ``only_owned``, dropping those ``consumer`` does not hold)."""
        if not entries:
            return entries
        ids = sorted((e.id for e in entries), key=lambda i: tuple(int(p) for p in i.split("-")))
        info = await self.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 10_000, consumername=consumer
        )
        counts = {str(p["message_id"]): int(p["times_delivered"]) for p in info}
        return [
            Entry(e.id, e.fields, counts.get(e.id, e.deliveries))
            for e in entries
            if not only_owned or e.id in counts
        ]

    async def keep_alive(self, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries ``consumer`` is still working on, so nobody reclaims them.

        Only entries it still owns are touched (one that another worker already reclaimed
        stays theirs), and ``JUSTID`` claims do not count as deliveries.
        """
        if not ids:
            return
        owned = {
            e.id for e in await self._with_deliveries([Entry(i, {}) for i in ids], consumer, only_owned=True)
        }
        mine = [i for i in ids if i in owned]
        if mine:
            await self.redis.xclaim(self.stream, self.group, consumer, 0, list(mine), justid=True)

    async def ack(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            pipe.hdel(self.errors, entry_id)
            await pipe.execute()

    async def record_error(self, entry_id: str, error: str) -> None:
        await self.redis.hset(self.errors, entry_id, error[:2000])

    async def last_error(self, entry_id: str) -> str | None:
        value = await self.redis.hget(self.errors, entry_id)
        return str(value) if value is not None else None

    async def dead_letter(self, entry: Entry, error: str, consumer: str) -> bool:
        """Move ``entry`` to the dead-letter stream with ``error``, atomically with its ack.

        Exactly once: two workers can hold the same entry (one stalled past ``claim_idle``,
        the other reclaimed it), and only the one whose XACK acknowledges it adds the dead
        letter. Returns whether this call did.
        """
        fields = {
            **entry.fields,
            "source_id": entry.id,
            "error": error[:2000],
            "deliveries": str(entry.deliveries),
            "group": self.group,
            "consumer": consumer,
        }
        flat = [part for pair in fields.items() for part in pair]
        moved = await self.redis.eval(
            DEAD_LETTER_SCRIPT, 3, self.stream, self.dead, self.errors, self.group, entry.id, *flat
        )
        return bool(moved)

    async def publish_stats(self, consumer: str, payload: str, ttl_s: int = 86_400) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.stats, consumer, payload)
            pipe.expire(self.stats, ttl_s)
            await pipe.execute()

    async def forget_consumer(self, consumer: str) -> None:
        """Remove ``consumer`` from the group if it holds nothing pending (a clean exit)."""
        info = await self.redis.xpending_range(self.stream, self.group, "-", "+", 1, consumername=consumer)
        if not info:
            await self.redis.xgroup_delconsumer(self.stream, self.group, consumer)
