"""`moderator scan`: judge a local folder or an S3 prefix offline through the real pipeline.

The command's edge: arguments, settings and logging, the output file, the exit code. The work is
moderator/pipeline/scan.py's Scan over a source from moderator/pipeline/scan_sources.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from moderator.cli.preflight import check_engine_files
from moderator.engine.factory import check_model_flag
from moderator.errors import ConfigError, ModeratorError
from moderator.events.upload import TENANT_ID_PATTERN, TENANT_ID_RULE
from moderator.logs import configure_logging
from moderator.pipeline.progress import Progress
from moderator.pipeline.scan import OperatorPolicies, Scan, engine_shortfall, max_in_flight
from moderator.pipeline.scan_sources import open_source
from moderator.service import build_pipeline, build_policies
from moderator.settings import load_settings


def cmd_scan(
    target: str,
    *,
    tenant: str | None,
    output: Path | None,
    config: Path | None,
    overrides: dict[str, Any],
    debug: bool = False,
    output_format: str = "jsonl",
) -> int:
    """Write one verdict line per object under `target` (JSON Lines or CSV), then a summary
    by decision and error code on stderr; 0 when every object got a verdict.

    Everything cheap is checked before the engine loads or a bucket is listed: the tenant id,
    the settings, the engine's files, the policies and the output file's folder."""
    tenant_id = tenant if tenant is not None else "default"
    if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        raise ConfigError(f"scan: invalid tenant id {tenant_id!r}: {TENANT_ID_RULE}")
    settings = load_settings(config, {**overrides, "policies.default_for_unknown": True})
    check_model_flag(settings.engine.kind, overrides.get("engine.model"))
    level = "debug" if debug else settings.log.level
    configure_logging(settings.log.model_copy(update={"level": _quiet(level)}))
    check_engine_files(settings.engine)
    registry = build_policies(settings)
    _check_output(output)
    policies = OperatorPolicies(registry)
    source = open_source(target, settings, exclude=output)
    progress = Progress(sys.stderr)
    if not any(
        (settings.policies.dir / f"{tenant_id}{ext}").is_file() for ext in (".yaml", ".yml")
    ):
        progress.note(f"scan: tenant {tenant_id!r} has no policy file; using the default policy")
    pipeline = build_pipeline(settings, store=source.store, policies=policies)
    model = pipeline.engine.info
    if model.smoke_test:
        progress.note(
            f"scan: SMOKE-TEST model ({model.engine}: {model.name}): verdicts are not meaningful"
        )
    gap = engine_shortfall(registry, tenant_id, pipeline.engine)
    if gap is not None:
        progress.note(f"moderator: warning: {gap.message()}")
    try:
        out = _open_output(output)
        try:
            scan = Scan(
                pipeline.processor,
                out,
                tenant_id=tenant_id,
                local=source.local,
                verdicts_topic=settings.kafka.topics.verdicts,
                max_in_flight=max_in_flight(settings),
                output_format=output_format,
            )
            try:
                scan.run(source.items, progress)
            except KeyboardInterrupt:
                progress.note(_interrupted_line(scan.counts().done, output))
                raise
        finally:
            if out is not sys.stdout:
                with contextlib.suppress(BrokenPipeError):  # reported as the scan's failure
                    out.close()
    finally:
        pipeline.close()
    if scan.output_closed and out is sys.stdout:
        _drop_stdout()
    if scan.fatal is not None:
        raise ModeratorError(f"scan: stopped: {scan.fatal}")
    if scan.skipped:
        raise ModeratorError(f"scan: {scan.skipped} object(s) got no verdict (see above)")
    return 0


def _interrupted_line(done: int, output: Path | None) -> str:
    """What a scan stopped by Ctrl-C kept; a scan has no resume."""
    where = str(output) if output is not None else "stdout"
    return (
        f"scan: interrupted: the {done} verdict(s) written to {where} are kept; a scan does "
        "not resume: run it again to judge every object"
    )


def _quiet(level: str) -> str:
    """`info` (the service default) becomes `warning`: progress owns stderr during a scan."""
    return "warning" if level == "info" else level


def _check_output(output: Path | None) -> None:
    """The output can be created: a usage error now, not after the engine has loaded."""
    if output is None:
        return
    if output.is_dir():
        raise ConfigError(f"scan: cannot write {output}: it is a directory")
    folder = output.parent
    if not folder.is_dir():
        raise ConfigError(f"scan: cannot write {output}: no directory {folder}")


def _open_output(output: Path | None) -> TextIO:
    if output is None:
        return sys.stdout
    try:
        return output.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"scan: cannot write {output}: {exc.strerror or exc}") from exc


def _drop_stdout() -> None:
    """stdout's reader has gone: point stdout at the null device, so that the interpreter's
    flush at exit does not report the broken pipe a second time (the note on SIGPIPE in the
    documentation of Python's `signal` module)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
