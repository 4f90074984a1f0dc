"""Samples -> training examples: the chat the model sees, its token ids, and the loss mask.

Each sample becomes the conversation the guard model is trained on: a user turn with the image
and the policy prompt, exactly as the transformers engine renders it for a request
(`hf_messages` and the checkpoint's chat template with the generation prompt), then the
assistant's answer, the JSON text `moderator dataset build` stores (`Sample.answer()`), closed by
the template's end-of-turn token. The prompt is the sample's own (the service's policy compiler
wrote it when the dataset was built) or, for a sample without one, the default policy's.

The prompt part is run through the processor with the image (which expands the image
placeholder into the model's image tokens); the answer and the end token are tokenised on their
own and appended, as a model's generated tokens follow its prompt. Labels are -100 (no loss)
everywhere except on the answer and that end token. The image is read and decoded by the
service's code, to the size the engine would decode it to, so training sees what serving sees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from PIL.Image import Image
from torch.utils.data import Dataset

from moderator.engine.guard.prompting import hf_messages
from moderator.errors import ConfigError, ModeratorError, ProcessingError
from moderator.fetch.decode import DecodeLimits
from moderator.training.dataset import Sample
from moderator.training.evaluate import ImageSource, decode_first_frame

IGNORE = -100
"""The label of a token that does not count in the loss (PyTorch's cross-entropy default)."""
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
"""Processor outputs with one value per token; every other output belongs to the image."""


def answer_text(sample: Sample) -> str:
    """The assistant's answer as the dataset stores it: the JSON of rating, category and
    rationale."""
    return json.dumps(sample.answer(), ensure_ascii=False)


class ChatEncoder:
    """Renders and tokenises (prompt, answer, image) triples for one processor.

    `end_ids`: the tokens that end a turn (the model's end-of-sequence ids): the answer is
    trained up to and including the first of them that the chat template puts after it.
    """

    def __init__(self, processor: Any, end_ids: Sequence[int]) -> None:
        self._processor = processor
        self._tokenizer = processor.tokenizer
        self._end_ids = frozenset(end_ids)
        self._prompts: dict[str, str] = {}
        self._end: list[int] | None = None

    def render_prompt(self, prompt: str) -> str:
        """The user turn and the generation prompt, as the engine renders a request."""
        rendered = self._prompts.get(prompt)
        if rendered is None:
            rendered = self._render(hf_messages(prompt), generation=True)
            self._prompts[prompt] = rendered
        return rendered

    def end_ids(self, prompt: str, answer: str) -> list[int]:
        """The tokens the chat template puts after an answer, up to its first end token."""
        if self._end is None:
            self._end = self._find_end(prompt, answer)
        return self._end

    def encode(self, prompt: str, answer: str, image: Image) -> dict[str, torch.Tensor]:
        """One example: the processor's outputs for the prompt and image, extended by the
        answer's tokens, and `labels` (the answer and end token; -100 elsewhere)."""
        rendered = self.render_prompt(prompt)
        inputs = self._processor(text=[rendered], images=[image], return_tensors="pt")
        target = self._tokens(answer) + self.end_ids(prompt, answer)
        prompt_len = int(inputs["input_ids"].shape[1])
        example: dict[str, torch.Tensor] = {}
        for key, value in inputs.items():
            if key in TOKEN_KEYS:
                extra = _extension(key, target)
                example[key] = torch.cat([value[0], extra.to(value.dtype)])
            else:
                example[key] = value
        labels = torch.full((prompt_len + len(target),), IGNORE, dtype=torch.long)
        labels[prompt_len:] = torch.tensor(target, dtype=torch.long)
        example["labels"] = labels
        return example

    def _find_end(self, prompt: str, answer: str) -> list[int]:
        messages = [*hf_messages(prompt), _assistant(answer)]
        whole = self._render(messages, generation=False)
        head = self.render_prompt(prompt) + answer
        if not whole.startswith(head):
            raise ConfigError(
                "base_model: its chat template does not render an assistant answer right after "
                "the generation prompt; it cannot be trained with moderator train"
            )
        tail = self._tokens(whole[len(head) :])
        for index, token in enumerate(tail):
            if token in self._end_ids:
                return tail[: index + 1]
        raise ConfigError(
            f"base_model: its chat template closes the assistant turn with "
            f"{whole[len(head) :]!r}, which holds no end-of-sequence token "
            f"({sorted(self._end_ids)})"
        )

    def _render(self, messages: list[dict[str, Any]], *, generation: bool) -> str:
        rendered = self._processor.apply_chat_template(
            messages, add_generation_prompt=generation, tokenize=False
        )
        if not isinstance(rendered, str):
            raise ConfigError("base_model: its chat template did not render a string")
        return rendered

    def _tokens(self, text: str) -> list[int]:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]


def _assistant(answer: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


def _extension(key: str, target: Sequence[int]) -> torch.Tensor:
    if key == "input_ids":
        return torch.tensor(list(target))
    if key == "attention_mask":
        return torch.ones(len(target), dtype=torch.long)
    return torch.zeros(len(target), dtype=torch.long)  # text tokens: type 0


class TrainingSet(Dataset[dict[str, torch.Tensor]]):
    """The samples of a split as training examples, each encoded when it is drawn (images are
    read and decoded then, so memory does not grow with the dataset)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        encoder: ChatEncoder,
        images: ImageSource,
        *,
        default_prompt: str,
        limits: DecodeLimits,
        input_size: int,
    ) -> None:
        self._samples = list(samples)
        self._encoder = encoder
        self._images = images
        self._default_prompt = default_prompt
        self._limits = limits
        self._input_size = input_size

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self._samples[index]
        try:
            image = decode_first_frame(
                self._images.read(sample.image), self._limits, self._input_size
            )
        except ProcessingError as exc:
            raise ModeratorError(
                f"sample {sample.id}: image {sample.image}: {exc.code.value}: {exc.message}"
            ) from exc
        return self._encoder.encode(self.prompt(sample), answer_text(sample), image)

    def prompt(self, sample: Sample) -> str:
        """The prompt `sample` is trained under: its own, else the default policy's."""
        return sample.prompt or self._default_prompt
