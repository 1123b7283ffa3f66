"""Where a record's time goes between topics: the Kafka timestamps of each hop.

Every record the bus writes carries the producer's CreateTime (epoch ms, taken when the
record is handed to the producer, before its linger), so for records that share a key (a
request id, an event id) the differences between the topics they pass through split the
latency per hop: the time from one process's ``send`` to the next one's, i.e. its producer's
linger and the broker, the next consumer's fetch, and that process's work up to its own
``send``. All processes run on one machine: one clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer

from streams.client.consuming import assign_topics
from streams.settings import KafkaSettings


async def stamps(
    kafka: KafkaSettings, topics: Sequence[str], keys: Iterable[str], since_ms: int
) -> dict[str, dict[str, int]]:
    """For each of ``topics``: key -> the timestamp of the first record with that key written
    since ``since_ms`` (epoch ms); keys not in ``keys`` are left out."""
    wanted = set(keys)
    found: dict[str, dict[str, int]] = {topic: {} for topic in topics}
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        partitions = await assign_topics(consumer, list(topics))
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        left = set()
        for tp in partitions:
            start = starts.get(tp)
            if start is None or start.offset >= ends[tp]:
                continue
            consumer.seek(tp, start.offset)
            left.add(tp)
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000)
            if not batches:
                break  # nothing more within a second: what was there has been read
            for tp, records in batches.items():
                for record in records:
                    key = (record.key or b"").decode(errors="replace")
                    if key in wanted:
                        found[tp.topic].setdefault(key, record.timestamp)
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return found
    finally:
        await consumer.stop()


def median_hops(
    path: Sequence[str],
    found: dict[str, dict[str, int]],
    first_ms: dict[str, float],
    last_ms: dict[str, float],
) -> dict[str, float]:
    """The median of each hop along ``path`` over the keys seen on every topic of it.

    ``first_ms`` / ``last_ms``: per key, when it entered (before the first topic) and when it
    came out (after the last), epoch ms. Hops are named ``<from>-><to>`` with the topics'
    names and ``in`` / ``out`` for the two ends.
    """
    keys = [k for k in first_ms if k in last_ms and all(k in found[t] for t in path)]
    if not keys:
        return {}
    points = ["in", *path, "out"]
    hops: dict[str, float] = {}
    for a, b in itertools.pairwise(points):
        spans = sorted(_at(b, k, found, first_ms, last_ms) - _at(a, k, found, first_ms, last_ms)
                       for k in keys)  # fmt: skip
        hops[f"{a}->{b}"] = spans[max(0, math.ceil(0.5 * len(spans)) - 1)]
    return hops


def _at(
    point: str,
    key: str,
    found: dict[str, dict[str, int]],
    first_ms: dict[str, float],
    last_ms: dict[str, float],
) -> float:
    if point == "in":
        return first_ms[key]
    if point == "out":
        return last_ms[key]
    return float(found[point][key])
