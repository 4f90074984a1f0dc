"""The `openai` client's connections split into small pools (httpcore's cost of placing a
request grows with its pool's size): the split itself, and that it never holds a request back
while the in-flight limit allows it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from moderator.dev.openai.server import OpenAITestServer
from moderator.dev.openai.simulator import BatchingModel, BatchingSimulator
from moderator.engine.base import EngineRequest
from moderator.engine.openai.engine import OpenAIEngine
from moderator.engine.openai.pools import POOL_CONNECTIONS, pool_sizes
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

MODEL = "test-guard"


@pytest.mark.parametrize(
    ("connections", "sizes"),
    [
        (1, [1]),
        (8, [8]),
        (9, [5, 4]),
        (12, [6, 6]),
        (24, [8, 8, 8]),
        (64, [8] * 8),
        (65, [8, 8] + [7] * 7),
    ],
)
def test_connections_are_split_into_even_pools_of_at_most_eight(
    connections: int, sizes: list[int]
) -> None:
    assert POOL_CONNECTIONS == 8
    assert pool_sizes(connections) == sizes


def test_one_pool_of_all_when_asked() -> None:
    assert pool_sizes(64, 64) == [64]


@pytest.fixture
def engine_at() -> Iterator[list[OpenAIEngine]]:
    engines: list[OpenAIEngine] = []
    yield engines
    for engine in engines:
        engine.close()


def test_every_request_the_limit_allows_runs_at_once_across_the_pools(
    engine_at: list[OpenAIEngine],
) -> None:
    # 24 connections: three pools of 8. 24 requests sent together must all reach the server
    # together (none waiting in a full pool while another has room).
    simulator = BatchingSimulator(BatchingModel(slots=24, alpha_s=0.4, beta_s=0.0))
    with OpenAITestServer(simulator, model=MODEL) as server:
        settings = EngineSettings.model_validate(
            {
                "kind": "openai",
                "base_url": server.url,
                "model": MODEL,
                "openai": {"max_in_flight": 24, "adaptive": False},
            }
        )
        engine = OpenAIEngine(settings)
        engine_at.append(engine)
        batch = [
            EngineRequest(f"r{i}", Image.new("RGB", (16, 16), (i, 0, 0)), "p", CATEGORIES)
            for i in range(24)
        ]
        started = time.monotonic()
        results = engine.classify(batch)
        elapsed = time.monotonic() - started
    assert all(r.assessment is not None for r in results)
    assert simulator.stats().max_running == 24
    assert elapsed < 2 * 0.4  # one service time, not several rounds of 8


def test_the_client_benchmark_prints_both_layouts_and_the_ratio() -> None:
    root = Path(__file__).resolve().parent.parent
    args = ["--requests", "40", "--rounds", "1", "--in-flight", "12"]
    command = [sys.executable, "bench/openai_client.py", *args]
    done = subprocess.run(
        command,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip().startswith("12 ")]
    assert [row[1:3] for row in rows] == [["one", "pool"], ["pools", "of"]], done.stdout
    assert rows[0][-1] == "1.00x"
    assert all(float(row[-3]) > 0 and float(row[-2]) > 0 for row in rows), done.stdout
