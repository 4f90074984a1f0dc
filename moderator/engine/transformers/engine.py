"""`engine.kind: transformers`: a guard model in-process, CPU or GPU, padded batches.

One `generate` call per micro-batch: the prompts are rendered through the checkpoint's own chat
template, padded on the left, and decoded greedily unless sampling is configured. With
`generation.structured` the xgrammar logits processor holds every row to the verdict schema.
The score is computed from the model's raw logits at the rating position (score.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image as PILImage
from PIL.Image import Image

from moderator.engine.base import GUARD_MODEL, Capabilities, EngineRequest, EngineResult
from moderator.engine.guard.output import result_from_output
from moderator.engine.guard.prompting import hf_messages
from moderator.engine.guard.schema import verdict_schema
from moderator.engine.smoke import card_identity, is_smoke_test
from moderator.engine.transformers import load as hf_load
from moderator.engine.transformers.score import (
    RECORD_STEPS,
    LogprobRecorder,
    RowScorer,
    rating_score,
)
from moderator.errors import ModeratorError
from moderator.events.verdict import CATEGORIES, ModelInfo
from moderator.settings import EngineSettings, GenerationSettings

WARMUP_PROMPT = "Warm-up request: describe the image as a safety assessment."


@dataclass(frozen=True)
class GeneratedRow:
    """One row of a `generate` call: the tokens, the text, the recorded log-probabilities."""

    rendered: str  # the prompt as the chat template rendered it
    prompt_tokens: int
    ids: list[int]  # generated ids, end-of-sequence and padding removed
    text: str
    step_logprobs: list[Any]  # log-softmax over the vocabulary per recorded step
    finished: bool  # stopped at end-of-sequence (False: cut at max_new_tokens)


class TransformersEngine:
    """Implements the Engine protocol on a local image-text-to-text checkpoint."""

    capabilities: ClassVar[Capabilities] = GUARD_MODEL  # O1..O9, told by the policy prompt

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._gen = settings.generation
        path = hf_load.checkpoint_dir(settings)
        card = card_identity(path)  # a fine-tuned checkpoint names itself
        self._loaded = hf_load.load(settings)
        self._info = ModelInfo(
            engine="transformers",
            name=card.name or str(settings.model),
            revision=settings.transformers.revision or card.revision,
            categories=self.capabilities.categories,
            smoke_test=is_smoke_test(path),
        )
        self._grammars: dict[str, Any] = {}
        self._tokenizer = self._loaded.processor.tokenizer
        self._lock = threading.Lock()  # one generate at a time: batching is the parallelism
        self._input_size = hf_load.input_size(self._loaded)
        self._ready = threading.Event()
        if settings.transformers.warmup:
            self.warm_up()
        self._ready.set()

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def ready(self) -> bool:
        """True once the model is loaded (and warmed up, when configured)."""
        return self._ready.is_set()

    def warm_up(self) -> float:
        """One generation on a blank image, so the first real batch pays no one-off costs."""
        started = time.perf_counter()
        image = PILImage.new("RGB", (64, 64), (127, 127, 127))
        request = EngineRequest("warm-up", image, WARMUP_PROMPT, CATEGORIES)
        self.classify([request])
        return time.perf_counter() - started

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        if not batch:
            return []
        with self._lock:
            return self._classify(batch)

    def close(self) -> None:
        self._grammars.clear()

    def _classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        rows, infer_ms = self._generate(
            [r.prompt for r in batch],
            [r.image for r in batch],
            self._gen,
            [self._schema(r.categories) for r in batch] if self._gen.structured else None,
            RECORD_STEPS,
        )
        results = []
        for row, request in zip(rows, batch, strict=True):
            score = None
            if self._gen.score:
                scorer = RowScorer(self._loaded, row.rendered, request.image)
                score = rating_score(self._tokenizer, row.ids, row.step_logprobs, scorer)
            generation = self._record(len(row.ids), infer_ms, len(batch))
            results.append(
                result_from_output(row.text, request.categories, score=score, generation=generation)
            )
        return results

    def generate(
        self,
        prompt: str,
        image: Image,
        gen: GenerationSettings,
        schema: dict[str, Any] | None,
    ) -> GeneratedRow:
        """One request with explicit parameters (the OpenAI-compatible test server uses this).

        Log-probabilities are recorded for every generated token when `gen.score` is set.
        """
        with self._lock:
            rows, _ = self._generate(
                [prompt], [image], gen, [schema] if schema is not None else None, gen.max_new_tokens
            )
        return rows[0]

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def generation(self) -> GenerationSettings:
        """The configured decoding parameters (what `classify` uses)."""
        return self._gen

    def render(self, prompt: str) -> str:
        """The prompt as the checkpoint's chat template renders it (image part first)."""
        return self._render(prompt)

    def _generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Image],
        gen: GenerationSettings,
        schemas: Sequence[dict[str, Any]] | None,
        record_steps: int,
    ) -> tuple[list[GeneratedRow], float]:
        import torch

        loaded = self._loaded
        texts = [self._render(p) for p in prompts]
        inputs = loaded.processor(
            text=texts, images=list(images), padding=True, return_tensors="pt"
        )
        inputs = inputs.to(loaded.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        recorder = LogprobRecorder(record_steps if gen.score else 0)
        kwargs = self._generate_kwargs(gen, schemas, recorder)
        started = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, **kwargs)
        infer_ms = (time.perf_counter() - started) * 1000.0
        prompt_len = int(inputs["input_ids"].shape[1])
        rows = []
        for i, rendered in enumerate(texts):
            generated = out.sequences[i, prompt_len:].tolist()
            ids = self._trim(generated)
            rows.append(
                GeneratedRow(
                    rendered=rendered,
                    prompt_tokens=int(inputs["attention_mask"][i].sum().item()),
                    ids=ids,
                    text=self._tokenizer.decode(ids, skip_special_tokens=True),
                    step_logprobs=[step[i] for step in recorder.logprobs[: len(ids)]],
                    finished=len(ids) < len(generated) or len(ids) < gen.max_new_tokens,
                )
            )
        return rows, infer_ms

    def _render(self, prompt: str) -> str:
        rendered = self._loaded.processor.apply_chat_template(
            hf_messages(prompt), add_generation_prompt=True, tokenize=False
        )
        if not isinstance(rendered, str):
            raise TransformersEngineError("the checkpoint's chat template did not render a string")
        return rendered

    def _generate_kwargs(
        self,
        gen: GenerationSettings,
        schemas: Sequence[dict[str, Any]] | None,
        recorder: LogprobRecorder,
    ) -> dict[str, Any]:
        """Generation config plus our processors, in order: record, constrain, warp.

        Temperature and top-p are passed as our own processors (not config fields) so that the
        recorder sees the model's raw logits before any of them.
        """
        from transformers import GenerationConfig, TemperatureLogitsWarper, TopPLogitsWarper

        sampling = gen.temperature > 0
        config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped in transformers
            max_new_tokens=gen.max_new_tokens,
            do_sample=sampling,
            top_k=None,
            eos_token_id=self._loaded.eos_token_ids,
            pad_token_id=self._loaded.pad_token_id,
            return_dict_in_generate=True,
        )
        processors: list[Any] = [recorder] if gen.score else []
        if schemas is not None:
            grammars = [self._grammar(schema) for schema in schemas]
            same = all(g is grammars[0] for g in grammars)
            processors.append(hf_load.grammar_processor(grammars[0] if same else grammars))
        if sampling:
            processors.append(TemperatureLogitsWarper(gen.temperature))
            if gen.top_p < 1.0:
                processors.append(TopPLogitsWarper(gen.top_p))
            if gen.seed is not None:
                import torch

                torch.manual_seed(gen.seed)
        return {"generation_config": config, "logits_processor": processors}

    def _schema(self, categories: tuple[str, ...]) -> dict[str, Any]:
        return verdict_schema(categories, self._gen.rationale_max_chars)

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        compiled = self._grammars.get(key)
        if compiled is None:
            compiled = hf_load.compile_grammar(self._loaded, schema)
            self._grammars[key] = compiled
        return compiled

    def _trim(self, ids: list[int]) -> list[int]:
        """Generated ids up to (not including) the first end-of-sequence or padding token."""
        stop = set(self._loaded.eos_token_ids) | {self._loaded.pad_token_id}
        for i, token in enumerate(ids):
            if token in stop:
                return ids[:i]
        return ids

    def _record(self, tokens: int, infer_ms: float, batch_size: int) -> dict[str, Any]:
        record = self._gen.record()
        record.update(
            engine="transformers",
            device=str(self._loaded.device),
            dtype=str(self._loaded.dtype).removeprefix("torch."),
            output_tokens=tokens,
            batch_size=batch_size,
            batch_infer_ms=round(infer_ms, 1),
        )
        return record


class TransformersEngineError(ModeratorError):
    """A batch the transformers engine could not run (the window isolates and retries)."""
