"""A small byte-level BPE tokenizer trained here, for tiny smoke-test checkpoints.

Real guard checkpoints ship ~150k-token vocabularies that cannot be downloaded in tests. This one is
trained on a few kilobytes of our own text (the taxonomy, verdict JSON, policy phrasing, plain
prose), so verdict strings tokenize into a realistic handful of merged tokens rather than bytes.
Byte-level BPE has no unknown token: any string round-trips exactly. Needs `tokenizers` (part of
the transformers extra): import this module only where torch and transformers are wanted anyway.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from moderator.events.verdict import CATEGORIES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_VOCAB = 4096
"""Upper bound for the learned vocabulary; the small corpus runs out of merges near 1.2k tokens."""

_RATIONALES = (
    "The picture shows a crowded beach on a sunny afternoon with families and umbrellas.",
    "A person holds a kitchen knife while cutting vegetables; nothing suggests harm.",
    "The image contains explicit content that the policy prohibits for this audience.",
    "Two people argue in the street and one of them makes an insulting gesture.",
    "The photo depicts a flooded road after a storm, with rescue workers nearby.",
    "A museum statue is shown without clothing in an artistic, non-sexual context.",
    "The drawing shows a dog being kicked, which counts as cruelty towards animals.",
    "There is a table with pills and powder arranged next to cash and a scale.",
    "The screenshot describes steps for breaking into a parked car at night.",
    "A landscape of mountains and a lake at dawn; no category of the policy applies.",
    'Text on the sign reads "no entry" and the braces {like these} are only decoration.',
)

_PROSE = (
    "The quick brown fox jumps over the lazy dog while the river runs past the old mill.",
    "Every morning the baker opens the shop at six and sells fresh bread to the neighbours.",
    "Weather reports say the rain will stop by noon, and the evening should be clear and warm.",
    "She wrote a long letter to her brother about the garden, the cat and the new house.",
    "Trains between the two cities run every hour, but the last one leaves before midnight.",
    "Children played football in the park until the light faded and their parents called.",
    "The committee will review the proposal next week and publish its decision in May.",
    "A small boat drifted across the harbour as the fishermen unloaded their morning catch.",
    "Please describe what you see in the image and explain your answer in one sentence.",
    "Numbers such as 0, 1, 2, 3, 42, 100 and 2024 appear in dates, prices and addresses.",
    "Questions? Answers! Lists: first, second; third - and finally (in brackets) the end.",
    "Our service reviews uploaded pictures and decides whether they may be published.",
)

_POLICY_LINES = (
    "Judge whether the picture below is acceptable under the rules that follow, one category "
    "at a time.",
    "Should not:",
    "Can:",
    "- Mock or degrade people for their origin, faith, body or beliefs.",
    "- Linger on wounds, torture or suffering as if it were entertainment.",
    "- Report on or teach about the subject without celebrating it.",
    "Everything in this category is permitted here; treat it as harmless.",
    "Nothing in this category is permitted here; treat any example of it as a violation.",
    "How to answer:",
    'Give the "rating": "Unsafe" when a rule is broken, "Safe" when none is.',
    'Name the "category" that applies, or "NA: None applying" when no category fits.',
    'Write a short "rationale" that says what the picture shows and which rule decided it.',
    "Reply with a single JSON object in this form:",
)


def corpus() -> Iterator[str]:
    """The training text: deterministic, written for this project."""
    yield from _PROSE
    yield from _POLICY_LINES
    yield from CATEGORIES
    for category, rationale in zip(CATEGORIES, itertools.cycle(_RATIONALES), strict=False):
        for rating in ("Safe", "Unsafe"):
            verdict = {"rating": rating, "category": category, "rationale": rationale}
            yield json.dumps(verdict)
            yield json.dumps(verdict, indent=4)
    for category in CATEGORIES:
        yield f"{category}: \nShould not:\n- ...\nCan:\n- ...\n"
    for role in ("system", "user", "assistant"):
        yield f"{role}\nYou are a helpful assistant.\n"


def train_tokenizer(special_tokens: Sequence[str]) -> Tokenizer:
    """Train byte-level BPE on `corpus()`; `special_tokens` get ids right after the learned vocab.

    Training sees no special tokens, so the learned ids are the same for every architecture and
    the special tokens sit at the end of the vocabulary, as in the Qwen2 tokenizers.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in special_tokens]
    )
    return tokenizer


OV_TEMPLATE = (
    # Images first, then the text parts joined by newlines, as the LLaVA-OneVision -hf template.
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}"
    "{{- '<image>\\n' -}}"
    "{%- endfor -%}"
    "{{- message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

QWEN_TEMPLATE = (
    # Parts in their given order; a default system turn unless the chat starts with one, as the
    # Qwen2-VL / Qwen2.5-VL instruct templates do.
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TokenSet:
    """Special tokens and chat template of one architecture family.

    `named` become tokenizer attributes (`tokenizer.image_token`, `.image_token_id`), which the
    processors read.
    """

    special: tuple[str, ...]
    named: dict[str, str]
    template: str


OV_TOKENS = TokenSet(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    named={"image_token": "<image>", "video_token": "<video>"},
    template=OV_TEMPLATE,
)
QWEN_TOKENS = TokenSet(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    named={
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
    template=QWEN_TEMPLATE,
)


def hf_tokenizer(tokens: TokenSet, *, max_length: int) -> PreTrainedTokenizerBase:
    """The trained tokenizer wrapped for transformers: left padding, chat template, named tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped in transformers
        tokenizer_object=train_tokenizer(tokens.special),
        eos_token="<|im_end|>",  # noqa: S106  # a vocabulary entry, not a secret
        pad_token="<|endoftext|>",  # noqa: S106
        padding_side="left",
        clean_up_tokenization_spaces=False,
        extra_special_tokens=dict(tokens.named),
        chat_template=tokens.template,
        model_max_length=max_length,
    )
