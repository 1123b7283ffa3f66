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
import statistics
import time
from collections.abc import Callable

import fastavro
import yaml

from streams.catalog import Catalog
from streams.codec import HEADER_SIZE, WriterSchema, decode_body, encode, schema_id_of
from streams.envelope import Envelope, new_envelope
from streams.jsonavro import from_json
from streams.settings import DEFAULT_CATALOG


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (median reported)")
    args = parser.parse_args()
    events = _events()
    rounds = max(1, args.events // len(events))
    assert HEADER_SIZE == 5
    _rate(bare_fastavro, events, 50)  # warm up
    _rate(govesb_codec, events, 50)
    results: dict[str, list[float]] = {"bare": [], "codec": [], "codec+envelope": []}
    for _ in range(args.repeat):  # interleaved so drift hits every side alike
        results["bare"].append(_rate(bare_fastavro, events, rounds))
        results["codec"].append(_rate(govesb_codec, events, rounds))
        results["codec+envelope"].append(_rate(govesb_codec_and_envelope, events, rounds))
    ratios = {
        name: [ours / bare for ours, bare in zip(rates, results["bare"], strict=True)]
        for name, rates in results.items()
        if name != "bare"
    }
    print(f"{'side':<16}{'events/s (median)':>20}{'ratio vs bare (median [min, max])':>38}")
    print(f"{'bare fastavro':<16}{statistics.median(results['bare']):>20,.0f}{'1.00':>38}")
    for name, values in ratios.items():
        rate = statistics.median(results[name])
        spread = f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"
        print(f"{name:<16}{rate:>20,.0f}{spread:>38}")
    print(
        json.dumps(
            {
                "events_per_repetition": rounds * len(events),
                "repetitions": args.repeat,
                "bare_events_per_s": statistics.median(results["bare"]),
                **{
                    f"{name}_ratio": {
                        "median": statistics.median(values),
                        "min": min(values),
                        "max": max(values),
                    }
                    for name, values in ratios.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
