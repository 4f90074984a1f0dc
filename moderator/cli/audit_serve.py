"""`moderator audit serve` (the read-only audit HTTP API) and `moderator audit hash-token`.

serve exits 2 for bad settings (no tokens, a token hash that is a known mistake, the api extra
missing); hash-token prints the SHA-256 hex that audit.api_tokens wants for a token read from
stdin, and exits 2 for a token no request could carry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moderator.cli.style import add_command, add_config_flag, examples
from moderator.errors import ConfigError

# Indented lines: printed as written (moderator/cli/style.py), `%s` included.
KEY_RECIPE = """\
Make a token and its audit.api_tokens key:
  TOKEN=$(openssl rand -hex 32)
  printf %s "$TOKEN" | moderator audit hash-token
  printf %s "$TOKEN" | sha256sum    # the same hash, without moderator
"""


def add_serve_parsers(audit_sub: Any) -> None:
    """Register `audit serve` and `audit hash-token`."""
    serve = add_command(
        audit_sub,
        "serve",
        help="serve the read-only audit HTTP API (needs the api extra)",
        description=(
            "Serve GET /v1/verdicts, /v1/verdicts/{event_id}, /v1/policy-versions/{hash} and "
            "/healthz over the audit store, with bearer tokens from audit.api_tokens (SHA-256 "
            "hex of a token -> the tenants it may read). OpenAPI at /openapi.json. "
            "Needs: pip install 'moderator[api]'. Exit 2 on bad settings: no tokens, or a "
            'token hash that is a known mistake (the hash of an empty string or of "%s").'
        ),
        epilog=examples(
            "moderator audit serve --config settings.yaml",
            "moderator audit serve --host 0.0.0.0 --port 8700 --config settings.yaml",
        )
        + "\n\n"
        + KEY_RECIPE,
    )
    serve.add_argument(
        "--host", default="127.0.0.1", metavar="ADDR", help="bind address (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8700, metavar="N", help="port (default: 8700)")
    add_config_flag(serve)

    add_command(
        audit_sub,
        "hash-token",
        help="print the audit.api_tokens key (SHA-256 hex) of a token read from stdin",
        description=(
            "Read one bearer token from stdin (typed without echo on a terminal; one trailing "
            "line break is ignored) and print the SHA-256 hex that audit.api_tokens is keyed by. "
            "Exit 2 for a token no request header could carry (empty, white space at either "
            "end, control characters, non-ASCII). Tokens under 32 characters get a warning."
        ),
        epilog=examples("moderator audit hash-token < token.txt", "moderator audit hash-token")
        + "\n\n"
        + KEY_RECIPE,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from moderator.audit.read.tokens import mistaken_hash
    from moderator.cli.audit_query import open_existing_store
    from moderator.settings import load_settings

    try:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        from moderator.audit.read.api import create_app
    except ImportError as exc:
        raise ConfigError(
            f"audit serve needs the api extra ({exc.name} is missing): pip install 'moderator[api]'"
        ) from exc
    settings = load_settings(args.config)
    tokens = settings.audit.api_tokens
    if not tokens:
        raise ConfigError(
            "audit.api_tokens: empty, so no request could be authorised (docs/audit.md)"
        )
    mistake = mistaken_hash(tokens)
    if mistake is not None:
        raise ConfigError(mistake)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be 1..65535, got {args.port}")
    url = settings.audit.url
    from moderator.audit.db.connect import create_audit_engine, normalize_url

    # The store opens on the first request: a URL whose driver is missing fails here instead.
    create_audit_engine(normalize_url(url)).dispose()
    app = create_app(lambda: open_existing_store(url), tokens)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log.level,
        log_config=_stderr_only(LOGGING_CONFIG),
    )
    return 0


def _stderr_only(config: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging set-up with its access log moved from stdout to stderr, beside every
    other log line."""
    handlers = {
        name: {**handler, "stream": "ext://sys.stderr"} if "stream" in handler else handler
        for name, handler in config.get("handlers", {}).items()
    }
    return {**config, "handlers": handlers}


def cmd_hash_token(_args: argparse.Namespace) -> int:
    from moderator.audit.read.tokens import (
        MAX_TOKEN_CHARS,
        MIN_TOKEN_CHARS,
        token_hash,
        token_problem,
    )

    token = _read_token(MAX_TOKEN_CHARS)
    problem = token_problem(token)
    if problem is not None:
        raise ConfigError(f"stdin: {problem}")
    if len(token) < MIN_TOKEN_CHARS:
        print(
            f"warning: a token of {len(token)} characters can be guessed; make one with: "
            "openssl rand -hex 32",
            file=sys.stderr,
        )
    print(token_hash(token))
    return 0


def _read_token(limit: int) -> str:
    """The token on stdin without one trailing line break; prompts without echo on a tty."""
    stdin = sys.stdin
    if stdin is None:
        raise ConfigError("stdin: closed; pipe the token in")
    if stdin.isatty():
        import getpass

        text = getpass.getpass("token (not shown): ")
    else:
        raw: Any = getattr(stdin, "buffer", stdin).read(limit + 3)
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError("stdin: the token is not UTF-8 text") from None
        else:
            text = raw
    if len(text) > limit + 2:
        raise ConfigError(f"stdin: longer than {limit} characters; not a token")
    return text.removesuffix("\n").removesuffix("\r")
