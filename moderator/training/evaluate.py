"""Run a configured engine over dataset samples, through the service's own engine code.

The engine and the micro-batching window in front of it are built by
moderator/engine/factory.py exactly as `moderator run` builds them (engine.* settings: batch
size, concurrency, timeouts, retries, generation). Each sample's image is read (a path relative
to the dataset file's folder, or an s3:// URI read with the s3.* settings) and decoded by the
service's decoder to the engine's input size under the fetch.* limits, first frame only; the
request carries the sample's prompt, or the default policy's compiled prompt when it has none.
Images are loaded on `fetch.concurrency` threads while the window batches; a bounded number of
samples is in flight. Progress with an ETA goes to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from PIL.Image import Image

from moderator.durations import duration
from moderator.engine.base import Engine, EngineRequest, EngineResult
from moderator.engine.factory import build_engine, build_window, warm_up
from moderator.engine.window import EngineWindow, WindowResult
from moderator.engine.window_engines import SelfBatching
from moderator.errors import ErrorCode, ModeratorError, ProcessingError
from moderator.events.verdict import CATEGORIES, ModelInfo
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.local import LOCAL_BUCKET, LocalFileStore
from moderator.fetch.store import ObjectStore
from moderator.masking import mask_passwords
from moderator.pipeline.progress import Counts, Progress
from moderator.policy.bundled import bundled_default
from moderator.policy.compiled import compile_policy
from moderator.policy.load import load_text, read_policy
from moderator.policy.registry import SURFACE_DEFAULT
from moderator.policy.resolve import resolve
from moderator.settings import Settings, TenancySettings
from moderator.training.dataset import Sample, resolve_image
from moderator.training.interrupt import cancelled, stop_window
from moderator.training.metrics import Prediction
from moderator.training.predictions import prediction_from_result
from moderator.training.run_progress import RunProgress

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Job:
    """One engine request to make: the sample's id, its image reference and the prompt."""

    id: str
    image: str
    prompt: str


@dataclass(frozen=True)
class RunStats:
    """What a run did: results by error code (unparseable output included) and its wall time
    from the first request to the last result (the warm-up not included)."""

    done: int
    errors: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class EngineEval:
    """An engine run over a dataset: one prediction per sample, in dataset order."""

    predictions: list[Prediction]
    stats: RunStats
    model: ModelInfo


# -- prompts and images --------------------------------------------------------------------------


def default_policy_prompt(policies_dir: Path | None, tenancy: TenancySettings) -> tuple[str, str]:
    """The default policy's compiled prompt, and where it came from: `default.yaml` (or
    `.yml`) in `policies_dir` when there is one, else the bundled default policy."""
    found = None
    if policies_dir is not None:
        found = next(
            (p for ext in (".yaml", ".yml") if (p := policies_dir / f"default{ext}").is_file()),
            None,
        )
    path = found if found is not None else Path("default.yaml")
    data = read_policy(found) if found is not None else bundled_default()
    files = {DEFAULT_TENANT: load_text(data.decode("utf-8"), path)}
    policy = compile_policy(resolve(files, DEFAULT_TENANT, SURFACE_DEFAULT, tenancy))
    return policy.prompt, str(found) if found is not None else "the bundled default policy"


def jobs_for(samples: Sequence[Sample], default_prompt: str) -> list[Job]:
    """One job per sample, with its own prompt or the default one."""
    return [Job(s.id, s.image, s.prompt if s.prompt else default_prompt) for s in samples]


class ImageSource:
    """Reads a sample's image bytes: a path relative to the dataset file's folder (absolute
    paths as they are), or an s3:// URI (client built from the s3.* settings on first use)."""

    def __init__(self, dataset: Path, settings: Settings) -> None:
        self._dataset = dataset
        self._settings = settings
        self._local = LocalFileStore()
        self._s3: ObjectStore | None = None
        self._lock = threading.Lock()

    def read(self, image: str) -> bytes:
        max_bytes = self._settings.fetch.max_object_bytes
        if image.startswith("s3://"):
            bucket, _, key = image.removeprefix("s3://").partition("/")
            if not bucket or not key:
                raise ProcessingError(ErrorCode.OBJECT_NOT_FOUND, f"{image}: not s3://bucket/key")
            return self._s3_store().get(bucket, key, None, max_bytes).data
        return self._local.get(
            LOCAL_BUCKET, str(resolve_image(self._dataset, image)), None, max_bytes
        ).data

    def _s3_store(self) -> ObjectStore:
        with self._lock:
            if self._s3 is None:
                from moderator.fetch.s3 import S3ObjectStore

                self._s3 = S3ObjectStore(self._settings.s3)
            return self._s3


def decode_first_frame(data: bytes, limits: DecodeLimits, input_size: int) -> Image:
    """The image as the service would hand it to the engine (its first frame)."""
    one = dataclasses.replace(limits, max_frames=1)
    return decode_image(data, one, input_size).frames[0]


# -- running -------------------------------------------------------------------------------------

OnResult = Callable[[Job, EngineResult], None]


class EngineRunner:
    """Feeds jobs to an engine window with at most `max_in_flight` unresolved; images are read
    and decoded on `loaders` threads. `on_result` is called once per job, on a worker thread
    (an image that cannot be read or decoded gives an error result with its error code), except
    for the jobs a Ctrl-C cancelled before the engine saw them: those are not done, not errors,
    and `on_result` never hears of them."""

    def __init__(
        self,
        window: EngineWindow,
        images: ImageSource,
        *,
        limits: DecodeLimits,
        input_size: int,
        loaders: int,
        max_in_flight: int,
        label: str = "eval",
    ) -> None:
        self._window = window
        self._label = label
        self._images = images
        self._limits = limits
        self._input_size = input_size
        self._loaders = loaders
        self._slots = threading.Semaphore(max_in_flight)
        self._cond = threading.Condition()
        self._done = 0
        self._errors: Counter[str] = Counter()
        self._fatal: str | None = None
        self._stopping = False  # Ctrl-C: the window's unsent requests are cancelled, not failed

    def run(self, jobs: Sequence[Job], on_result: OnResult, progress: Progress) -> RunStats:
        """Every job through the engine; raises ModeratorError when `on_result` failed (after
        the jobs in flight have finished). On Ctrl-C no more jobs go in, the window is closed
        and the engine call in progress ends before the KeyboardInterrupt goes on."""
        started = time.monotonic()
        pool = ThreadPoolExecutor(self._loaders, thread_name_prefix="eval-load")
        try:
            submitted = self._submit(jobs, on_result, progress, pool)
            while True:
                with self._cond:
                    if self._done >= submitted:
                        break
                    self._cond.wait(progress.every_s)
                progress.tick(self._counts(len(jobs)), listing=False)
        except KeyboardInterrupt:
            with self._cond:
                self._stopping = True
            pool.shutdown(wait=False, cancel_futures=True)
            stop_window(self._window, progress.note, self._label)
            progress.finish(self._counts(len(jobs)))  # where it stopped, not the last tick
            raise
        finally:
            pool.shutdown(wait=True)
        seconds = time.monotonic() - started
        progress.finish(self._counts(len(jobs)))
        if self._fatal is not None:
            raise ModeratorError(f"stopped: {self._fatal}")
        return RunStats(self._done, dict(self._errors), seconds)

    def _submit(
        self, jobs: Sequence[Job], on_result: OnResult, progress: Progress, pool: Executor
    ) -> int:
        """Hand the jobs to the loaders, at most `max_in_flight` unresolved; how many went."""
        submitted = 0
        for job in jobs:
            while not self._slots.acquire(timeout=progress.every_s):
                progress.tick(self._counts(len(jobs)), listing=False)
            with self._cond:
                if self._fatal is not None:
                    self._slots.release()
                    break
            pool.submit(self._load, job, on_result)
            submitted += 1
            progress.tick(self._counts(len(jobs)), listing=False)
        return submitted

    def _counts(self, total: int) -> Counts:
        with self._cond:
            return Counts(total, self._done, sum(self._errors.values()), 0)

    def _load(self, job: Job, on_result: OnResult) -> None:
        try:
            data = self._images.read(job.image)
            image = decode_first_frame(data, self._limits, self._input_size)
        except ProcessingError as exc:
            self._finish(
                job, EngineResult(error_code=exc.code, error_message=exc.message), on_result
            )
            return
        except Exception as exc:  # a bug must not hang the run: it becomes this job's error
            result = EngineResult(error_code=ErrorCode.ENGINE_ERROR, error_message=repr(exc))
            self._finish(job, result, on_result)
            return
        request = EngineRequest(job.id, image, job.prompt, CATEGORIES)
        future = self._window.submit(request)
        future.add_done_callback(lambda f: self._resolved(job, f, on_result))

    def _resolved(self, job: Job, future: Future[WindowResult], on_result: OnResult) -> None:
        self._finish(job, future.result().result, on_result)

    def _finish(self, job: Job, result: EngineResult, on_result: OnResult) -> None:
        if self._stopping and cancelled(result):  # set before the window was closed
            self._slots.release()
            return
        try:
            on_result(job, result)
        except Exception as exc:  # a full disk, a bug: stop submitting, report at the end
            with self._cond:
                self._fatal = self._fatal or f"{job.id}: {type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._done += 1
                if result.error_code is not None:
                    self._errors[result.error_code.value] += 1
                self._cond.notify_all()
            self._slots.release()


def loading_line(settings: Settings) -> str:
    """`loading the transformers engine (model ./ckpt), then one warm-up request`."""
    s = settings.engine
    where = f" (model {s.model})" if s.model else ""
    if s.kind == "openai" and s.base_url:
        where = f" (model {s.model} at {mask_passwords(str(s.base_url))})"
    return f"loading the {s.kind} engine{where}, then one warm-up request"


def max_in_flight(settings: Settings, engine: Engine) -> int:
    """Enough requests to keep every engine batch (or a server's in-flight limit) busy."""
    s = settings.engine
    limit = 2 * s.batch_size * s.concurrency
    if isinstance(engine, SelfBatching):
        limit = max(limit, 2 * engine.max_calls)
    return limit + settings.fetch.concurrency


@dataclass
class Engines:
    """A loaded engine and the window in front of it, warmed up; closed together."""

    engine: Engine
    window: EngineWindow

    @classmethod
    def start(
        cls,
        settings: Settings,
        warm_prompt: str,
        *,
        announce: TextIO | None = None,
        label: str = "eval",
    ) -> Engines:
        """Build the engine and window as the service does and send one warm-up request, so
        the first call's cost (kernels, connections) is not counted in samples/s. With
        `announce`, a line goes there before loading (which can take minutes) and one when the
        engine has answered, with the time taken."""
        started = time.monotonic()
        if announce is not None:
            print(f"{label}: {loading_line(settings)}", file=announce, flush=True)
        engines = cls._build(settings, warm_prompt, label)
        if announce is not None:
            took = duration(time.monotonic() - started)
            smoke = " (a SMOKE-TEST model: its answers mean nothing)"
            smoke = smoke if engines.engine.info.smoke_test else ""
            print(f"{label}: engine ready in {took}{smoke}", file=announce, flush=True)
        return engines

    @classmethod
    def _build(cls, settings: Settings, warm_prompt: str, label: str) -> Engines:
        engine = build_engine(settings.engine)
        try:
            window = build_window(engine, settings.engine)
        except BaseException:
            engine.close()
            raise
        engines = cls(engine, window)
        try:
            first = warm_up(window, warm_prompt, CATEGORIES, engine.input_size).result
        except KeyboardInterrupt:  # the warm-up call ends before the process does
            stop_window(window, lambda line: print(line, file=sys.stderr, flush=True), label)
            engines.close()
            raise
        except BaseException:
            engines.close()
            raise
        if first.error_code in (ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT):
            engines.close()
            raise ModeratorError(
                f"the engine did not answer a warm-up request: {first.error_code.value}: "
                f"{first.error_message}"
            )
        return engines

    def runner(self, settings: Settings, images: ImageSource, label: str = "eval") -> EngineRunner:
        """A runner over this window; `label` starts its lines (`eval`, `rationales`)."""
        return EngineRunner(
            self.window,
            images,
            limits=DecodeLimits.from_settings(settings.fetch),
            input_size=self.engine.input_size,
            loaders=settings.fetch.concurrency,
            max_in_flight=max_in_flight(settings, self.engine),
            label=label,
        )

    def close(self) -> None:
        try:
            self.window.close()
        finally:
            self.engine.close()


def evaluate_engine(
    samples: Sequence[Sample],
    settings: Settings,
    images: ImageSource,
    default_prompt: str,
    progress_stream: TextIO,
    *,
    announce: bool = False,
) -> EngineEval:
    """Every sample through the configured engine; one prediction each, in dataset order.
    A result without a parseable answer is a prediction with rating None: the raw text of
    unparseable output, or the error code and message of a failed request (an engine or image
    error). With `announce`, the engine's loading and warm-up are reported on
    `progress_stream` too."""
    jobs = jobs_for(samples, default_prompt)
    results: dict[str, EngineResult] = {}
    lock = threading.Lock()

    def keep(job: Job, result: EngineResult) -> None:
        with lock:
            results[job.id] = result

    engines = Engines.start(
        settings, default_prompt, announce=progress_stream if announce else None
    )
    try:
        progress = RunProgress(progress_stream, "eval")  # from here: warm-up is not counted
        stats = engines.runner(settings, images).run(jobs, keep, progress)
        model = engines.engine.info
    finally:
        engines.close()
    smoke = model.smoke_test
    predictions = [prediction_from_result(j.id, results[j.id], smoke_test=smoke) for j in jobs]
    return EngineEval(predictions, stats, model)
