"""Scaling over cores: the pipeline bench's replays alone.

    python -m tests.benchmarks --only scaling   (or python -m tests.benchmarks.bench_pipeline
    --scaling-only)

One worker, two workers of one group, and one ``govesb worker --processes 2``, each on the same
batch written while they run, with the CPU of the workers, the broker and the bench process;
keys ``one_worker_replay_events_per_s``, ``two_workers_events_per_s``, ``scaling_ratio``,
``processes_events_per_s``, ``processes_ratio`` and ``cpu_cores_used``.
"""

from __future__ import annotations

from tests.benchmarks import bench_pipeline
from tests.benchmarks.common import BenchBus, Section


async def run(bus: BenchBus, repeat: int) -> Section:
    """The replays of :mod:`tests.benchmarks.bench_pipeline`, ``repeat`` times each."""
    return await bench_pipeline.run(bus, repeat, scaling_only=True)
