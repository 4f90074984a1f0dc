"""The `openai` engine client's own CPU per request, with its connections in one pool or split
into pools of 8 (what the client does: moderator/engine/openai/pools.py, POOL_CONNECTIONS).

Run from the project root:

    .venv/bin/python bench/openai_client.py [--requests N] [--in-flight 16,64] [--rounds 3]

The server is the simulated continuous-batching server of bench/saturation.py, in a child
process, with as many slots as requests in flight and a fixed 20 ms per request, so every
request waits on the server, never on the client's limit of its own. This process sends N
requests per layout and round (the same 64x64 PNG chat body, built by the engine's own request
code), from four feeder threads that keep about twice the in-flight limit outstanding, as the
engine window does; the client caps them at the limit (fixed, not adaptive). Figures: this
process's CPU time per request (every thread: the event loop, the feeders), requests/s, and
the ratio of the split layout's CPU per request to one pool's. Rounds alternate the layouts;
the best round of each is reported (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moderator.dev.openai.simulator import BatchingModel, SimulatorProcess
from moderator.engine.base import EngineRequest
from moderator.engine.openai.client import OpenAIClient
from moderator.engine.openai.limit import InFlightLimit
from moderator.engine.openai.pools import POOL_CONNECTIONS
from moderator.engine.openai.request import ChatFormat
from moderator.events.verdict import CATEGORIES
from moderator.settings import GenerationSettings, OpenAISettings

SERVED = "sim-guard"
SERVICE_S = 0.02
FEEDERS = 4


def _body() -> bytes:
    request = EngineRequest("bench", Image.new("RGB", (64, 64), (90, 40, 10)), "p", CATEGORIES)
    encoded = ChatFormat(SERVED, GenerationSettings(), OpenAISettings(), source="bench").encode(
        request
    )
    assert isinstance(encoded, bytes), encoded
    return encoded


def _round(url: str, body: bytes, requests: int, in_flight: int, pool: int) -> tuple[float, float]:
    """CPU seconds per request and requests/s for one layout."""
    client = OpenAIClient(
        url,
        OpenAISettings(),
        timeout_s=60,
        limit=InFlightLimit(in_flight, adaptive=False),
        connections=in_flight,
        max_response_bytes=1 << 20,
        pool_connections=pool,
    )
    try:
        client.send([body] * in_flight)  # open the connections before measuring
        chunk = max(in_flight // 2, 1)
        left = [requests]
        lock = threading.Lock()

        def feed() -> None:
            while True:
                with lock:
                    n = min(chunk, left[0])
                    left[0] -= n
                if n == 0:
                    return
                for outcome in client.send([body] * n):
                    if not hasattr(outcome, "data"):
                        raise RuntimeError(f"a request failed: {outcome}")

        feeders = [threading.Thread(target=feed) for _ in range(FEEDERS)]
        cpu, wall = time.process_time(), time.perf_counter()
        for t in feeders:
            t.start()
        for t in feeders:
            t.join()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        client.close()
    return cpu / requests, requests / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per layout and round")
    parser.add_argument("--in-flight", default="16,64", help="comma-separated limits")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    body = _body()
    print(f"{args.requests} requests per layout and round, best of {args.rounds} rounds")
    print(f"{'in flight':>9}  {'layout':<14} {'CPU ms/request':>15} {'requests/s':>11}  ratio")
    for in_flight in (int(x) for x in args.in_flight.split(",")):
        model = BatchingModel(slots=in_flight, alpha_s=SERVICE_S, beta_s=0.0)
        layouts = {"one pool": in_flight, f"pools of {POOL_CONNECTIONS}": POOL_CONNECTIONS}
        best: dict[str, tuple[float, float]] = {}
        with SimulatorProcess(model, served_model=SERVED) as sim:
            for _ in range(args.rounds):
                for name, pool in layouts.items():
                    cpu, rate = _round(sim.url, body, args.requests, in_flight, pool)
                    if name not in best or cpu < best[name][0]:
                        best[name] = (cpu, rate)
        base = best["one pool"][0]
        for name, (cpu, rate) in best.items():
            print(
                f"{in_flight:>9}  {name:<14} {cpu * 1000:>15.3f} {rate:>11.0f}  {cpu / base:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
