"""Codec cost: GovESB's envelope + wire-format codec against bare fastavro, side by side.

    python -m tests.benchmarks.bench_codec [--events N] [--repeat R]

Both sides encode and decode the same typical events (every catalogue sample) in the same
process, interleaved, R times; the figure is the median ratio of our throughput to bare
fastavro's (1.0 = no overhead), with min and max. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import fastavro
import yaml

from streams.contract.catalog import Catalog
from streams.contract.codec import HEADER_SIZE, WriterSchema, decode_body, encode, schema_id_of
from streams.contract.envelope import Envelope, new_envelope
from streams.contract.jsonavro import from_json
from streams.settings import DEFAULT_CATALOG
from tests.benchmarks.common import BenchBus, Figure, Section, print_section, ratios


def _events() -> list[tuple[int, object, dict]]:
    catalog = Catalog.load()
    samples = yaml.safe_load((DEFAULT_CATALOG.parent / "samples.yaml").read_text())
    return [
        (index + 1, t.parsed, from_json(t.schema, samples[t.name]))
        for index, t in enumerate(catalog)
    ]


def bare_fastavro(events: list[tuple[int, object, dict]], rounds: int) -> int:
    """schemaless_writer then schemaless_reader; nothing else."""
    done = 0
    for _ in range(rounds):
        for _schema_id, parsed, record in events:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parsed, record)
            out.seek(0)
            fastavro.schemaless_reader(out, parsed, None)
            done += 1
    return done


def govesb_codec(events: list[tuple[int, object, dict]], rounds: int) -> int:
    """Wire-format encode, schema-id lookup in the parsed-schema cache, checked decode."""
    cache = {sid: WriterSchema(sid, "", parsed, "") for sid, parsed, _ in events}
    done = 0
    for _ in range(rounds):
        for schema_id, parsed, record in events:
            value = encode(schema_id, parsed, record)
            decode_body(cache[schema_id_of(value)].parsed, value)
            done += 1
    return done


def govesb_codec_and_envelope(events: list[tuple[int, object, dict]], rounds: int) -> int:
    """The codec plus building and reading the CloudEvents headers of each event."""
    cache = {sid: WriterSchema(sid, "", parsed, "") for sid, parsed, _ in events}
    done = 0
    for _ in range(rounds):
        for schema_id, parsed, record in events:
            headers = new_envelope("tra", "itax", "tz.go.tra.X", "123456789").to_headers()
            value = encode(schema_id, parsed, record)
            Envelope.from_headers(headers)
            decode_body(cache[schema_id_of(value)].parsed, value)
            done += 1
    return done


def _rate(run: Callable[[list, int], int], events: list, rounds: int) -> float:
    started = time.perf_counter()
    done = run(events, rounds)
    return done / (time.perf_counter() - started)


def measure(events_per_repetition: int, repeat: int) -> Section:
    """Bare fastavro, our codec, our codec + envelope: interleaved, ``repeat`` times."""
    events = _events()
    rounds = max(1, events_per_repetition // len(events))
    assert HEADER_SIZE == 5
    _rate(bare_fastavro, events, 50)  # warm up
    _rate(govesb_codec, events, 50)
    results: dict[str, list[float]] = {"bare": [], "codec": [], "codec+envelope": []}
    for _ in range(repeat):  # interleaved so drift hits every side alike
        results["bare"].append(_rate(bare_fastavro, events, rounds))
        results["codec"].append(_rate(govesb_codec, events, rounds))
        results["codec+envelope"].append(_rate(govesb_codec_and_envelope, events, rounds))
    section = Section("1. codec: encode + decode of every catalogue sample vs bare fastavro")
    section.add("bare_events_per_s", "bare fastavro", Figure.of(results["bare"]), "events/s")
    section.add("codec_events_per_s", "our codec", Figure.of(results["codec"]), "events/s")
    section.add("codec_ratio", "our codec / bare", ratios(results["codec"], results["bare"]), "x")
    section.add(
        "codec_envelope_ratio",
        "codec + envelope / bare",
        ratios(results["codec+envelope"], results["bare"]),
        "x",
    )
    section.extra["events_per_repetition"] = rounds * len(events)
    return section


async def run(bus: BenchBus, repeat: int) -> Section:
    """The codec needs neither broker nor registry; ``bus`` is unused."""
    return measure(20_000, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (median reported)")
    args = parser.parse_args()
    section = measure(args.events, args.repeat)
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
