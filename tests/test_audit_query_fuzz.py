"""Generated flag values for `moderator audit query`: whatever is typed, the command exits 0 with
rows (or a note) or 2 with one line naming the problem; never a traceback, never exit 1 (the
database is there)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.cli.audit_query import add_query_parser
from moderator.cli.main import main
from tests import audit_strategies as values
from tests.audit_fixtures import make_db
from tests.fuzz import fuzz_settings

FLAGS = {
    "--tenant": values.tenants,
    "--event-id": st.one_of(st.sampled_from(["a-1", "b-0"]), values.texts),
    "--bucket": st.one_of(st.just("uploads"), values.texts),
    "--object-key": st.one_of(st.just("alpha/2026/11/29/a-0.jpg"), values.texts),
    "--sha256": values.hexes,
    "--decision": values.decisions,
    "--category": values.categories,
    "--policy-version": values.hexes,
    "--model": values.models,
    "--error": values.error_codes,
    "--source": values.sources,
    "--surface": values.surfaces,
    "--since": values.times,
    "--until": values.times,
    "--sort": values.sorts,
    "--limit": values.limits,
    "--cursor": values.cursors,
    "--columns": st.one_of(
        st.sampled_from(["event_id,because", "score,surface,rationale", "tenant_id,because"]),
        values.texts,
    ),
    "--format": st.one_of(st.sampled_from(["table", "json", "csv"]), values.texts),
    # Never a file that exists: the working directory is an empty folder. Surrogates only as
    # argv carries them (undecodable bytes), and no NUL: the settings loader does not turn
    # Python's refusal of such a path into a configuration error.
    "--config": st.text(
        st.one_of(
            st.characters(codec=None, exclude_categories=("Cs",), exclude_characters="\x00/"),
            st.integers(0xDC80, 0xDCFF).map(chr),
        ),
        min_size=1,
        max_size=20,
    ),
}
NOTES = ("no matching audit rows", "next: --cursor ")


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.mktemp("query-fuzz")
    url = make_db(base / "audit.db")
    empty = base / "cwd"
    empty.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("MODERATOR_")]:
            patch.delenv(name)
        patch.setenv("MODERATOR_AUDIT__URL", url)
        patch.chdir(empty)
        yield


def run_query(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["audit", "query", *argv])
        except SystemExit as exc:  # a usage error the parser reports itself (exit 2)
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.fuzz
@fuzz_settings(120)
@given(
    flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=5).flatmap(
        lambda chosen: st.fixed_dictionaries({flag: FLAGS[flag] for flag in chosen})
    ),
    every=st.booleans(),
)
def test_any_flag_values_exit_0_or_2_with_one_line(
    store_env: None, flags: dict[str, str], every: bool
) -> None:
    """Default 120 commands (about 2 s); each of the 19 value flags drawn from hostile values."""
    argv = [f"{flag}={value}" for flag, value in flags.items()] + (["--all"] if every else [])
    code, out, err = run_query(argv)
    assert "Traceback" not in err
    if code == 2:
        assert out == "", argv
        # a configuration error, or a usage error the parser reports (docs/cli.md, "Errors")
        first = err.startswith(("moderator: ", "moderator audit query: error: "))
        assert len(err.splitlines()) == 1 and first, (argv, err)
        assert len(err) < 400, err
    else:
        assert code == 0, (argv, code, err)
        lines = err.splitlines()
        assert len(lines) <= 1 and all(line.startswith(NOTES) for line in lines), (argv, err)


def test_the_strategies_reach_every_flag() -> None:
    """FLAGS names every flag of `audit query` that takes a value."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_query_parser(sub)
    usage = sub.choices["query"].format_usage()
    assert set(re.findall(r"\[(--[a-z0-9-]+) [^\]]+\]", usage)) == set(FLAGS)
