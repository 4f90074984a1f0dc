"""`moderator train`: fine-tune a guard model on a dataset; `moderator train merge`: fold a LoRA
adapter into a full checkpoint the engines serve.

Training is moderator/training/finetune/ (trainer.py runs it); this module only parses the
flags. Exit 0 when the model is saved, 1 on a runtime failure, 2 on a bad configuration (one
line naming the key: an unknown key, a missing dataset or checkpoint, an architecture
mismatch), 128 + the signal's number when Ctrl-C or SIGTERM stopped the run with a checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.cli.style import add_command, examples
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from moderator.training.finetune.rundir import Resume

DESCRIPTION = (
    "Fine-tune a guard model (LLaVA-OneVision, Qwen2-VL or Qwen2.5-VL checkpoint) on a dataset "
    "written by `moderator dataset build`: LoRA adapters (method: lora) or every weight of the "
    "language model (method: full), the vision tower frozen by default, with transformers' "
    "Trainer. Each sample is the engine's own chat: the image and the sample's policy prompt, "
    "then its JSON answer; only the answer and its end token count in the loss. The run "
    "directory (output_dir) gets config.yaml (the effective configuration), log.jsonl (one "
    "line per logged step), checkpoint-N/ (every save_steps; --resume continues from them) "
    "and final/ (the adapter or the model, with the processor); the path of final/ goes to "
    "stdout, progress and loss to stderr. With an eval split, the trained model is then "
    "evaluated on it. Ctrl-C (or SIGTERM) stops after the running step with a checkpoint; a "
    "second Ctrl-C stops at once. docs/training.md lists every configuration key. Exit 0 when "
    "the model is saved, 1 on a runtime failure, 2 on a bad configuration (one line naming the "
    "key), 130 (143 for SIGTERM) when stopped."
)
EXAMPLES = examples(
    "moderator train --config train.yaml",
    "moderator train --config train.yaml --resume",
    "moderator train --config train.yaml --resume runs/ov-lora/checkpoint-500",
    "moderator train merge runs/ov-lora --out models/ov-tuned",
)
MERGE_DESCRIPTION = (
    "Write a full checkpoint from a training run (its final/ directory) or a LoRA adapter "
    "directory: the adapter folded into the base model's weights, with the processor files "
    "and a model card, ready for `engine.kind: transformers` or an LMDeploy or vLLM server. "
    "The base model is the one the run trained (or the adapter names) unless --base is given. "
    "A full fine-tuning run's model is written as it is. The checkpoint's path goes to stdout. "
    "Exit 0 when written, 1 on a runtime failure, 2 on a bad argument."
)


def add_train_parser(sub: Any) -> None:
    """Register `train` (and `train merge`) on the top-level subparsers."""
    p = add_command(
        sub,
        "train",
        help="fine-tune a guard model on a dataset (LoRA or full); merge LoRA adapters",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the run configuration (YAML: base_model, dataset, output_dir, method, ...)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue the run in output_dir from its latest checkpoint-N, or from CHECKPOINT",
    )
    commands = p.add_subparsers(dest="train_command", metavar="merge")
    merge = add_command(
        commands,
        "merge",
        help="fold a LoRA adapter into a full checkpoint",
        description=MERGE_DESCRIPTION,
        epilog=examples(
            "moderator train merge runs/ov-lora --out models/ov-tuned",
            "moderator train merge runs/ov-lora/checkpoint-500 --out models/ov-500",
            "moderator train merge adapter --out models/tuned --base ./LlavaGuard-0.5B",
        ),
    )
    merge.add_argument(
        "source",
        type=Path,
        metavar="RUN_OR_ADAPTER_DIR",
        help="a run directory (its final/ is used), a checkpoint-N or an adapter directory",
    )
    merge.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="where to write the checkpoint"
    )
    merge.add_argument(
        "--base",
        type=Path,
        metavar="PATH",
        help="the base checkpoint (default: the run's base_model, or the adapter's)",
    )
    merge.add_argument(
        "--name",
        metavar="NAME",
        help="the model's name in its card and verdicts (default: the run directory's name)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run `train` or `train merge`; the exit code."""
    if getattr(args, "train_command", None) == "merge":
        from moderator.training.finetune.merge import cmd_merge

        return cmd_merge(args)
    if args.config is None:
        raise ConfigError("train: --config FILE is required")
    from moderator.training.finetune.config import load_config
    from moderator.training.finetune.trainer import train

    config = load_config(args.config)
    resume = None if args.resume is None else _resume(args.resume)
    result = train(config, resume=resume, stderr=sys.stderr, config_file=args.config)
    if result.stopped is not None:  # a signal stopped it with a checkpoint: 128 + the signal
        return 128 + int(signal.Signals[result.stopped])
    print(f"final: {result.final}")
    if result.report is not None:
        print(f"report: {result.report}")
    return 0


def _resume(value: str) -> Resume:
    return "latest" if value == "latest" else Path(value)
