"""`engine.kind: lmdeploy`: QwenGuard in-process on LMDeploy's TurboMind engine (CUDA only).

Start-up (`LmdeployEngine(settings)`) builds the pipeline through `startup.start_pipeline`, which
refuses anything but TurboMind serving images (its docstring lists the checks).

Requests: `classify` is called from the window's worker threads. Each item of a batch becomes its
own request on the pipeline's event loop (`pipe.internal_thread.loop`, the loop the engine was
started on): `AsyncEngine.preprocess` then `AsyncEngine.generate`, all items gathered at once, so
TurboMind's scheduler sees every item of every concurrent batch and keeps its slots full. An
item that fails ends as `engine_error` alone.

Score (`score`): after an item's generation has given a rating, the same coroutine
sends its scoring request, the user turn plus the answer up to the rating value as a partial
assistant message, for one token and the top log-probabilities of the model's own distribution
(`config.scoring_config_kwargs`); the scoring requests of a batch therefore run
concurrently on the same loop. A scoring request that fails
only leaves that item's score null. When the generation's own log-probabilities are already raw
(temperature 1, top-p 1, no schema) they are used instead and no extra request is sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL.Image import Image

from moderator.engine.base import GUARD_MODEL, Capabilities, EngineRequest, EngineResult
from moderator.engine.guard.output import result_from_output
from moderator.engine.guard.schema import verdict_schema
from moderator.engine.guard.score import TokenLogprob
from moderator.engine.lmdeploy.config import (
    checkpoint_dir,
    generation_config_kwargs,
    input_size,
    logprobs_are_exact,
    scoring_config_kwargs,
)
from moderator.engine.lmdeploy.score import (
    DISABLED,
    RATING_NOT_FOUND,
    ScoreOutcome,
    collect_output,
    generation_score,
    request_score,
    token_logprobs,
)
from moderator.engine.lmdeploy.startup import first_line, start_pipeline
from moderator.engine.smoke import card_identity, is_smoke_test
from moderator.errors import ErrorCode, ModeratorError
from moderator.events.verdict import ModelInfo
from moderator.settings import EngineSettings

TOP_LOGPROBS = 20  # alternatives per step when the score is computable; both ratings fit easily
SCORE_STEPS = 32  # the rating comes within the first few tokens of `{"rating": "...`


class LmdeployEngineClosed(ModeratorError):
    """classify was called after close()."""


def lmdeploy_messages(prompt: str, image: Image) -> list[dict[str, Any]]:
    """One user turn, image first, in the OpenAI-style form LMDeploy's VL pipeline takes.

    `image_data` carries a PIL image as is (no encoding round trip); it is the part LMDeploy's
    own `MultimodalProcessor` writes for a `(prompt, image)` pair.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_data", "image_data": {"data": rgb}},
                {"type": "text", "text": prompt},
            ],
        }
    ]


# --- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """One finished request: the text, its token ids and per-step logprobs, LMDeploy's reason."""

    text: str
    input_tokens: int
    token_ids: list[int]
    tokens: list[TokenLogprob] | None
    finish_reason: str | None


Outcome = tuple[Generated, ScoreOutcome]


class LmdeployEngine:
    """Implements the Engine protocol on an lmdeploy Pipeline running TurboMind.

    Without `pipe` it starts one for engine.model through every start-up check
    (`start_pipeline`); `pipe` hands it one already built and verified (tests pass a double).
    """

    capabilities: ClassVar[Capabilities] = GUARD_MODEL  # O1..O9, told by the policy prompt

    def __init__(self, settings: EngineSettings, pipe: Any = None) -> None:
        model_dir = checkpoint_dir(settings.model)
        if pipe is None:
            pipe = start_pipeline(model_dir, settings.lmdeploy)
        self._pipe = pipe
        self._engine = pipe.async_engine
        self._loop: asyncio.AbstractEventLoop = pipe.internal_thread.loop
        self._gen = settings.generation
        exact = self._gen.score and logprobs_are_exact(self._gen)
        self._top_logprobs = TOP_LOGPROBS if exact else None
        scoring = self._gen.score and not exact and settings.lmdeploy.score_request
        self._score_top = settings.lmdeploy.score_top_logprobs if scoring else None
        self._score_config: Any = None
        if self._score_top is not None:
            from lmdeploy import GenerationConfig

            self._score_config = GenerationConfig(**scoring_config_kwargs(self._score_top))
        card = card_identity(model_dir)  # a checkpoint of `moderator train merge` names itself
        self._info = ModelInfo(
            engine="lmdeploy",
            name=card.name or str(settings.model),
            revision=card.revision,
            categories=self.capabilities.categories,
            smoke_test=is_smoke_test(model_dir),
        )
        self._input_size = input_size(model_dir)
        self._configs: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return self._input_size

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        """Every item as its own request on the pipeline's loop; one result per item."""
        if not batch:
            return []
        if self._closed:
            raise LmdeployEngineClosed("the lmdeploy engine is closed")
        work = [
            (lmdeploy_messages(r.prompt, r.image), self._gen_config(r.categories)) for r in batch
        ]
        future = asyncio.run_coroutine_threadsafe(self._run(work), self._loop)
        outcomes = future.result()
        return [
            self._result(request, outcome, len(batch))
            for request, outcome in zip(batch, outcomes, strict=True)
        ]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pipe.close()

    async def _run(
        self, work: Sequence[tuple[list[dict[str, Any]], Any]]
    ) -> list[Outcome | BaseException]:
        return await asyncio.gather(
            *(self._item(messages, config) for messages, config in work),
            return_exceptions=True,
        )

    async def _item(self, messages: list[dict[str, Any]], gen_config: Any) -> Outcome:
        """One item: its generation, then its score (a scoring request where needed)."""
        generated = await self._generate(messages, gen_config)
        return generated, await self._score(messages, generated)

    async def _generate(self, messages: list[dict[str, Any]], gen_config: Any) -> Generated:
        engine = self._engine
        request = await engine.preprocess(
            messages=messages, session_id=engine.session_mgr.get(), gen_config=gen_config
        )
        text, ids, steps, finish = await collect_output(engine, request)
        tokens = None
        if self._top_logprobs is not None and len(steps) == len(ids):
            # Only the opening steps: decoding every alternative of a long rationale would hold
            # up the loop, and the rating is near the start.
            tokenizer = engine.tokenizer
            tokens = token_logprobs(
                ids[:SCORE_STEPS],
                steps[:SCORE_STEPS],
                lambda t: str(tokenizer.decode([t], skip_special_tokens=False)),
            )
        return Generated(text, request.input_token_len, ids, tokens, finish)

    async def _score(self, messages: list[dict[str, Any]], generated: Generated) -> ScoreOutcome:
        """The item's score; a failing scoring request only makes it None."""
        if self._top_logprobs is not None:  # the generation's own logprobs are raw
            return generation_score(generated.text, generated.tokens)
        if self._score_config is None:
            return ScoreOutcome.none(DISABLED)
        if generated.finish_reason in ("error", "abort"):  # an error verdict, not scored
            return ScoreOutcome.none(RATING_NOT_FOUND)
        return await request_score(self._engine, messages, generated.text, self._score_config)

    def _gen_config(self, categories: tuple[str, ...]) -> Any:
        """The GenerationConfig for a request's category set (cached; LMDeploy copies it)."""
        with self._lock:
            config = self._configs.get(categories)
            if config is None:
                from lmdeploy import GenerationConfig

                schema = (
                    verdict_schema(categories, self._gen.rationale_max_chars)
                    if self._gen.structured
                    else None
                )
                kwargs = generation_config_kwargs(self._gen, schema, self._top_logprobs)
                config = GenerationConfig(**kwargs)
                self._configs[categories] = config
            return config

    def _result(
        self, request: EngineRequest, outcome: Outcome | BaseException, batch_size: int
    ) -> EngineResult:
        record = self._gen.record()
        record.update(
            engine="lmdeploy",
            backend="turbomind",
            top_logprobs=self._top_logprobs,
            score_top_logprobs=self._score_top,
            batch_size=batch_size,
        )
        if isinstance(outcome, BaseException):
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"lmdeploy: {_describe(outcome)}",
                generation=record,
            )
        generated, score = outcome
        record.update(
            input_tokens=generated.input_tokens,
            output_tokens=len(generated.token_ids),
            finish_reason=generated.finish_reason,
        )
        if generated.finish_reason in ("error", "abort"):
            return EngineResult(
                error_code=ErrorCode.ENGINE_ERROR,
                error_message=f"lmdeploy finished the request with {generated.finish_reason!r}",
                raw_output=generated.text,
                generation=record,
            )
        record.update(score.record())
        return result_from_output(
            generated.text, request.categories, score=score.value, generation=record
        )


def _describe(exc: BaseException) -> str:
    """One line for an item's failure; LMDeploy's RequestError carries a stable code."""
    code = getattr(getattr(exc, "code", None), "value", None)
    text = first_line(exc) or type(exc).__name__
    return f"{code}: {text}" if isinstance(code, str) else f"{type(exc).__name__}: {text}"
