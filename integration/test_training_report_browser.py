"""The evaluation report.html in a real browser: Debian's chromium, headless, shows every plot.

The page has no script (its Content-Security-Policy allows none), so the test asks the browser
itself over the DevTools protocol (`--remote-debugging-pipe`: JSON messages ending in a NUL
byte, commands on the browser's fd 3, replies on its fd 4): each plot's img element must have
loaded (complete, natural width and height above 0) and take up space on the page.

Without chromium the test skips with the reason locally and fails with CI=true (.ci/chromium.sh
installs it), so a CI machine that lost the browser cannot pass by skipping.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from moderator.training.dataset import read_dataset
from moderator.training.metrics import compute
from moderator.training.predictions import read_predictions
from moderator.training.report import write_report

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "eval"
TIMEOUT_S = 60
PLOTS = ("confusion-chart", "per-category-chart", "calibration-chart", "roc-pr-chart")
_IMAGES = """JSON.stringify(Array.from(document.images).map(i => {
  const box = i.getBoundingClientRect();
  return {id: i.id, complete: i.complete, naturalWidth: i.naturalWidth,
          naturalHeight: i.naturalHeight, width: box.width, height: box.height,
          visibility: getComputedStyle(i).visibility};
}))"""


def chromium_unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) because the browser cannot run here."""
    message = f"chromium unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI installs it with .ci/chromium.sh)", pytrace=False)
    pytest.skip(f"{message} (apt-get install chromium, or bash .ci/chromium.sh)")


class DevTools:
    """A headless chromium driven over its DevTools pipe."""

    def __init__(self, binary: str, workdir: Path) -> None:
        to_browser, self._send_fd = os.pipe()
        self._read_fd, from_browser = os.pipe()
        # Above 9, so the shell's redirections below cannot collide with fds 3 and 4.
        high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser)
        os.close(from_browser)
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        args += [f"--user-data-dir={workdir / 'profile'}", "--remote-debugging-pipe", "about:blank"]
        # A file, not a pipe: chromium logs freely, and a full pipe would stall it.
        self._log = workdir / "chromium.log"
        # bash, not sh: dash reads only one-digit fd numbers in redirections.
        script = f'exec "$0" "$@" 3<&{high_in} 4>&{high_out} {high_in}<&- {high_out}>&-'
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", script, *args],
                pass_fds=(high_in, high_out),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        os.close(high_in)
        os.close(high_out)
        self._buffer = b""
        self._next_id = 0
        self._deadline = time.monotonic() + TIMEOUT_S

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]
            self._fill()

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def _fill(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"chromium did not answer within {TIMEOUT_S} s", pytrace=False)
        ready, _, _ = select.select([self._read_fd], [], [], left)
        if ready:
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                self._process.wait(timeout=10)
                log = self._log.read_text(encoding="utf-8", errors="replace")
                pytest.fail(f"chromium exited: {log[-2000:]}", pytrace=False)
            self._buffer += chunk

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("Browser.close")
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(timeout=10)
        os.close(self._send_fd)
        os.close(self._read_fd)


def _open(tools: DevTools, url: str) -> str:
    """Open `url` in a new tab and wait until it and its images have loaded; the session id."""
    target = tools.call("Target.createTarget", {"url": url})["targetId"]
    session = str(
        tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    )
    loaded = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
    while not tools.evaluate(session, loaded):
        time.sleep(0.05)
    return session


def test_report_plots_are_visible_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plots need the replay extra")
    binary = shutil.which("chromium")
    if binary is None:
        chromium_unavailable("no chromium on PATH")
    samples = read_dataset(FIXTURES / "dataset.jsonl")
    predictions = read_predictions(FIXTURES / "predictions.jsonl")
    metrics = compute(samples, predictions)
    write_report(tmp_path / "report", metrics, samples, predictions, {"model": "fixture"})
    url = (tmp_path / "report" / "report.html").as_uri()

    tools = DevTools(binary, tmp_path)
    try:
        session = _open(tools, url)
        images = {i["id"]: i for i in json.loads(tools.evaluate(session, _IMAGES))}
        summary = tools.evaluate(session, "document.getElementById('summary').innerText")
    finally:
        tools.close()

    assert sorted(images) == sorted(PLOTS)
    for plot in PLOTS:
        image = images[plot]
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
        assert image["width"] > 100 and image["height"] > 100, image
        assert image["visibility"] == "visible", image
    assert "Balanced accuracy" in summary and "0.656" in summary  # the fixture's value
