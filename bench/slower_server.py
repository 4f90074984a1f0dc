"""The `openai` engine's adaptive in-flight limit when its model server becomes slower for good.

Run from the project root (needs the `openai` extra, as `make install` installs it):

    .venv/bin/python bench/slower_server.py [--fast-s S] [--slow-s S] [--factor F]

A simulated continuous-batching server (moderator.dev.openai.simulator: 16 slots, 0.05 s a
request) is fed without pause by 40 threads through one OpenAIEngine (adaptive limit, at most
32 in flight). After `--fast-s` seconds every request takes `--factor` times as long, as when
other clients load a shared server. Every second the limit, the base latency it measures
against, its probe count and the items answered that second are printed; at the end, the
items/s of the second half of the slow phase against the slower server's ceiling (slots over
the service time) and the lowest limit after the change. docs/engine-openai.md quotes them.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from moderator.dev.openai.server import OpenAITestServer
from moderator.dev.openai.simulator import BatchingModel, BatchingSimulator
from moderator.engine.base import EngineRequest
from moderator.engine.openai.engine import OpenAIEngine
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

SLOTS = 16
MAX_IN_FLIGHT = 32
FEEDERS = 40
BASE_S = 0.05


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fast-s", type=float, default=8.0, help="seconds before the change")
    parser.add_argument("--slow-s", type=float, default=30.0, help="seconds after it")
    parser.add_argument("--factor", type=float, default=6.0, help="how much slower (> 1)")
    args = parser.parse_args(argv)
    if args.factor <= 1 or args.fast_s <= 0 or args.slow_s <= 0:
        parser.error("--factor must be over 1, --fast-s and --slow-s above 0")
    simulator = BatchingSimulator(BatchingModel(slots=SLOTS, alpha_s=BASE_S, beta_s=0.0))
    with OpenAITestServer(simulator, model="sim-guard") as server:
        settings = EngineSettings.model_validate(
            {
                "kind": "openai",
                "base_url": server.url,
                "model": "sim-guard",
                "openai": {"max_in_flight": MAX_IN_FLIGHT},
            }
        )
        engine = OpenAIEngine(settings)
        stop = threading.Event()
        answered = [0]
        counting = threading.Lock()

        def feed(k: int) -> None:
            i = 0
            while not stop.is_set():
                image = Image.new("RGB", (8, 8), (k, i % 256, 0))
                engine.classify([EngineRequest(f"r{k}-{i}", image, "p", CATEGORIES)])
                with counting:
                    answered[0] += 1
                i += 1

        threads = [threading.Thread(target=feed, args=(k,)) for k in range(FEEDERS)]
        for thread in threads:
            thread.start()
        limit = engine.limit
        started = time.monotonic()
        slow_rates: list[float] = []
        lowest = limit.limit
        try:
            changed = False
            seen = 0
            while (now := time.monotonic() - started) < args.fast_s + args.slow_s:
                time.sleep(1.0)
                now = time.monotonic() - started
                count, seen = answered[0] - seen, answered[0]
                if not changed and now >= args.fast_s:
                    slower = BatchingModel(slots=SLOTS, alpha_s=BASE_S * args.factor, beta_s=0.0)
                    simulator.model = slower
                    changed = True
                    print(f"{now:5.1f} s  the server is now {args.factor:g}x slower")
                    continue
                base = limit.baseline_s
                shown = f"{base:.3f} s" if base is not None else "-"
                print(
                    f"{now:5.1f} s  limit {limit.limit:3d}  base {shown}  probes {limit.probes}"
                    f"  answered {count}/s"
                )
                if changed:
                    slow_rates.append(count)
                    lowest = min(lowest, limit.limit)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            engine.close()
    late = slow_rates[len(slow_rates) // 2 :] or [0.0]
    rate = sum(late) / len(late)
    ceiling = SLOTS / (BASE_S * args.factor)
    print(
        f"slow phase, second half: {rate:.1f} items/s, {rate / ceiling:.2f} x the slower "
        f"server's ceiling ({ceiling:.0f} items/s); lowest limit after the change: {lowest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
