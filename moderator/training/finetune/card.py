"""The model card of a fine-tuned checkpoint: README.md for people, moderator-model.json for tools.

Both say the same things: the model's name and revision (what its verdicts carry: the
`transformers` engine reads them from moderator-model.json), the base model (path, name,
revision where known, licence), how it was trained (LoRA or full, the run's effective config),
the training data (each split file's SHA-256 and sample count) and the evaluation (the run's
report and the base model's, with the comparison's verdict) when the run has one.

The revision is the first 12 hex digits of a SHA-256 over the weight files: the same weights
always get the same revision, other weights another. The base's licence is read from its
README's front matter (`license:`), else its config.json; otherwise the card says "unknown".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from moderator import __version__
from moderator.engine.smoke import CARD, card_identity, is_smoke_test
from moderator.errors import ConfigError
from moderator.training.dataset import read_dataset
from moderator.training.finetune.inputs import sha256_file, split_file
from moderator.training.finetune.rundir import CONFIG_FILE
from moderator.training.metrics import HEADLINE

README = "README.md"
EVAL_DIR = "eval"
BASE_EVAL_DIR = "eval-base"
STEP_PREFIX = "step-"  # RUN/eval/step-N: the report of checkpoint-N
SPLITS = ("train", "eval", "test")
UNKNOWN = "unknown"
METHODS = {"lora": "LoRA adapters merged into the base", "full": "full fine-tuning"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The metrics a card shows: the headline ones (metrics.json has them all).
CARD_METRICS = HEADLINE
# Where a run's config.yaml (config.py's `effective`) names the base model and the dataset.
BASE_KEYS = ("resolved.base_model", "base_model")
DATASET_KEYS = ("dataset",)
_HUB_CACHE = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[0-9a-f]+)")


@dataclass(frozen=True)
class CardInputs:
    """What a card is made from: the model's name, the base, the run and the trained weights."""

    name: str
    base: Path | None
    run: Path | None
    weights: Path
    adapter: Mapping[str, Any] | None  # the LoRA adapter's config; None for full fine-tuning
    report: Path | None = None  # the weights' evaluation report (default: RUN/eval)


def write_card(checkpoint: Path, inputs: CardInputs) -> dict[str, Any]:
    """Write README.md and moderator-model.json into `checkpoint` (its weights already there);
    return the card."""
    card = {
        "name": inputs.name,
        "revision": weights_revision(checkpoint),
        "smoke_test": is_smoke_test(checkpoint),
        "base_model": base_facts(inputs.base),
        "training": training_facts(inputs),
        "data": data_facts(inputs.run),
        "evaluation": eval_facts(inputs.run, inputs.report),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "moderator_version": __version__,
    }
    save_card(checkpoint, card)
    return card


def refresh_evaluation(checkpoint: Path, run: Path, report: Path | None = None) -> dict[str, Any]:
    """Re-read the run's evaluation into an existing card (after the run was evaluated)."""
    card = read_card(checkpoint)
    card["evaluation"] = eval_facts(run, report)
    save_card(checkpoint, card)
    return card


def read_card(checkpoint: Path) -> dict[str, Any]:
    """moderator-model.json of `checkpoint`; ConfigError when missing or unreadable."""
    card_identity(checkpoint)  # the engine's own checks: present and a JSON object
    path = checkpoint / CARD
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no {CARD} (not a merged checkpoint)")
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def save_card(checkpoint: Path, card: Mapping[str, Any]) -> None:
    text = json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    (checkpoint / CARD).write_text(text + "\n", encoding="utf-8")
    (checkpoint / README).write_text(render_readme(card), encoding="utf-8")


# -- facts ---------------------------------------------------------------------------------------


def weights_revision(checkpoint: Path) -> str:
    """First 12 hex digits of a SHA-256 over the weight files' names and bytes, in name order."""
    files = [p for p in checkpoint.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise ConfigError(f"{checkpoint}: no weight files (*.safetensors) to name a revision by")
    return files_digest(files)[:12]


def adapter_digest(adapter: Path) -> str:
    """SHA-256 over an adapter directory's config and weights: which adapter a merge folded in."""
    return files_digest([p for p in adapter.iterdir() if p.name.startswith("adapter_")])


def files_digest(files: list[Path]) -> str:
    """SHA-256 over the files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_facts(base: Path | None) -> dict[str, Any]:
    """Path, name, revision (None when not known) and licence of the base model."""
    if base is None:
        return {"path": None, "name": UNKNOWN, "revision": None, "license": UNKNOWN}
    resolved = base.expanduser().resolve()
    name, revision = resolved.name, None
    hub = _HUB_CACHE.search(resolved.as_posix())
    own = card_identity(resolved) if resolved.is_dir() else None
    if hub:
        name, revision = f"{hub['org']}/{hub['name']}", hub["rev"]
    elif own is not None and own.name:
        name, revision = own.name, own.revision
    return {
        "path": str(base),
        "name": name,
        "revision": revision,
        "license": base_license(resolved),
        "smoke_test": is_smoke_test(resolved),
    }


def base_license(base: Path) -> str:
    """`license:` of the base's README front matter, else of its config.json, else unknown."""
    front = front_matter(base / README)
    value = front.get("license")
    if isinstance(value, str) and value:
        other = front.get("license_name")
        return f"{value} ({other})" if value == "other" and isinstance(other, str) else value
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return UNKNOWN
    value = config.get("license") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else UNKNOWN


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML block between the first two `---` lines of a model card; {} when none."""
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if match is None:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def training_facts(inputs: CardInputs) -> dict[str, Any]:
    """LoRA or full, the adapter's rank and targets, and the run's effective config."""
    facts: dict[str, Any] = {
        "method": "lora" if inputs.adapter is not None else "full",
        "run": str(inputs.run) if inputs.run is not None else None,
        "config": run_config(inputs.run) if inputs.run is not None else None,
    }
    if inputs.adapter is not None:
        facts["lora"] = {
            key: inputs.adapter.get(key)
            for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
        }
        facts["adapter_sha256"] = adapter_digest(inputs.weights)
    return facts


def run_config(run: Path) -> dict[str, Any]:
    """The run's effective config (config.yaml); {} when the run has none."""
    path = run / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not readable YAML ({_first(exc)})") from exc
    return data if isinstance(data, dict) else {}


def base_path(config: Mapping[str, Any]) -> str | None:
    """The base model's path that a run's config names."""
    return _first_text(config, BASE_KEYS)


def dataset_path(config: Mapping[str, Any]) -> str | None:
    """The dataset (a `moderator dataset build` directory, or a file) a run's config names."""
    return _first_text(config, DATASET_KEYS)


def data_facts(run: Path | None) -> dict[str, Any] | None:
    """The dataset's path and, per split file, its SHA-256 and sample count."""
    config = run_config(run) if run is not None else {}
    named = dataset_path(config)
    if named is None:
        return None
    path = Path(named).expanduser()
    names = [config.get("train_split"), (config.get("eval") or {}).get("split"), *SPLITS]
    files = [path] if path.is_file() else []
    if path.is_dir():
        found = (split_file(path, name) for name in dict.fromkeys(names) if isinstance(name, str))
        files = [file for file in found if file is not None]
    splits = {
        file.stem: {
            "file": file.name,
            "sha256": sha256_file(file),
            "samples": len(read_dataset(file)),
        }
        for file in files
    }
    return {"path": named, "splits": splits}


def eval_facts(run: Path | None, report: Path | None = None) -> dict[str, Any] | None:
    """The trained model's evaluation (`report`, default RUN/eval), the base model's
    (RUN/eval-base) and which is better; None when there is no report."""
    if run is None:
        return None
    report = report if report is not None else run / EVAL_DIR
    if not (report / "metrics.json").is_file():
        return None
    from moderator.training.report import compare, read_metrics

    tuned = read_metrics(report)
    facts: dict[str, Any] = {
        "report": str(report),
        "dataset": (tuned.get("header") or {}).get("dataset"),
        "metrics": {k: tuned.get(k) for k in CARD_METRICS},
        "base_metrics": None,
        "verdict": None,
    }
    if (run / BASE_EVAL_DIR / "metrics.json").is_file():
        base = read_metrics(run / BASE_EVAL_DIR)
        facts["base_metrics"] = {k: base.get(k) for k in CARD_METRICS}
        facts["verdict"] = compare(run / BASE_EVAL_DIR, report)["verdict"]["reason"]
    return facts


# -- README.md -----------------------------------------------------------------------------------


def render_readme(card: Mapping[str, Any]) -> str:
    """The card for people: front matter (licence, base model, tags), then each section."""
    base = card["base_model"]
    training = card["training"]
    front = {
        "license": base["license"],
        "base_model": base["name"],
        "tags": ["moderator", "guard-model", training["method"]],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [f"# {card['name']}", ""]
    if card.get("smoke_test"):
        lines += [
            "**SMOKE-TEST MODEL**: fine-tuned from random weights; its verdicts mean nothing.",
            "",
        ]
    lines += [
        f"A guard model fine-tuned with moderator {card['moderator_version']} "
        f"({METHODS[training['method']]}). Verdicts from it name `{card['name']}` at revision "
        f"`{card['revision']}` (the first 12 hex digits of a SHA-256 over the weight files).",
        "",
        "## Base model",
        "",
        f"- name: {base['name']}",
        f"- path: {base['path'] or 'unknown'}",
        f"- revision: {base['revision'] or 'unknown'}",
        f"- licence: {base['license']}"
        + (
            " (not stated by the base model: check it before distributing this model)"
            if base["license"] == UNKNOWN
            else "; this model is a derivative and inherits it"
        ),
        "",
    ]
    lines += _data_lines(card.get("data"))
    lines += _training_lines(training)
    lines += _eval_lines(card.get("evaluation"))
    return "\n".join(lines).rstrip() + "\n"


def _data_lines(data: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Training data", ""]
    if not data:
        return [*lines, "Not recorded (the run's config names no dataset).", ""]
    lines += [f"Dataset: `{data['path']}`", "", "| split | file | samples | SHA-256 |"]
    lines.append("|---|---|---:|---|")
    for split, facts in data["splits"].items():
        lines.append(f"| {split} | {facts['file']} | {facts['samples']} | `{facts['sha256']}` |")
    return [*lines, ""]


def _training_lines(training: Mapping[str, Any]) -> list[str]:
    lines = ["## Training", "", f"Method: {METHODS[training['method']]}."]
    if "lora" in training:
        lora = training["lora"]
        lines.append(
            f"LoRA rank {lora['r']}, alpha {lora['lora_alpha']}, dropout {lora['lora_dropout']}, "
            f"on {lora['target_modules']}."
        )
    if training.get("config"):
        config = yaml.safe_dump(training["config"], sort_keys=True).strip()
        lines += ["", "The run's effective config:", "", "```yaml", config, "```"]
    return [*lines, ""]


def _eval_lines(evaluation: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evaluation:
        return [
            *lines,
            "Not evaluated yet (`moderator eval` on the eval split writes a report).",
            "",
        ]
    base = evaluation.get("base_metrics") or {}
    lines += [f"On `{evaluation['dataset']}` (report: `{evaluation['report']}`).", ""]
    lines += ["| metric | this model | base model |", "|---|---:|---:|"]
    for key in CARD_METRICS:
        lines.append(
            f"| {key} | {_shown(evaluation['metrics'].get(key))} | {_shown(base.get(key))} |"
        )
    if evaluation.get("verdict"):
        lines += ["", f"Base model (A) against this model (B): {evaluation['verdict']}"]
    return [*lines, ""]


# -- helpers -------------------------------------------------------------------------------------


def _first_text(config: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for dotted in keys:
        value: Any = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str | Path) and str(value):
            return str(value)
    return None


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
