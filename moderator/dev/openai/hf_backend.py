"""A completion backend for the OpenAI-compatible test server that runs the transformers engine.

With a tiny checkpoint this gives the `openai` engine a real model behind a real HTTP server in
tests: the same chat template, constrained decoding and log-probabilities as in-process use.
"""

from __future__ import annotations

from typing import Any

from PIL.Image import Image

from moderator.dev.openai.server import Completion, CompletionParams
from moderator.engine.guard.score import TokenLogprob
from moderator.engine.transformers.engine import GeneratedRow, TransformersEngine


class TransformersBackend:
    """Implements CompletionBackend with `TransformersEngine.generate`."""

    def __init__(self, engine: TransformersEngine) -> None:
        self._engine = engine

    def complete(self, prompt: str, image: Image, params: CompletionParams) -> Completion:
        base = self._engine.generation
        gen = base.model_copy(
            update={
                "max_new_tokens": params.max_tokens or base.max_new_tokens,
                "temperature": params.temperature if params.temperature is not None else 1.0,
                "top_p": params.top_p if params.top_p is not None else 1.0,
                "seed": params.seed,
                "structured": params.json_schema is not None,
                "score": params.logprobs,
            }
        )
        row = self._engine.generate(prompt, image, gen, params.json_schema)
        tokens = self._tokens(row, params.top_logprobs) if params.logprobs else None
        return Completion(
            text=row.text,
            tokens=tokens,
            finish_reason="stop" if row.finished else "length",
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.ids),
        )

    def _tokens(self, row: GeneratedRow, top: int) -> list[TokenLogprob]:
        tokenizer: Any = self._engine.tokenizer
        out = []
        for token_id, logprobs in zip(row.ids, row.step_logprobs, strict=False):
            alternatives: tuple[tuple[str, float], ...] = ()
            if top > 0:
                values, indices = logprobs.topk(top)
                alternatives = tuple(
                    (tokenizer.decode([int(i)]), float(v))
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                )
            out.append(
                TokenLogprob(
                    token=tokenizer.decode([token_id]),
                    logprob=float(logprobs[token_id].item()),
                    top=alternatives,
                )
            )
        return out
