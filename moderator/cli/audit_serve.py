"""`moderator audit serve` (the read-only audit HTTP API) and `moderator audit hash-token`.

serve exits 2 for bad settings (no tokens, a token hash that is a known mistake, the api extra
missing); hash-token prints the SHA-256 hex that audit.api_tokens wants for a token read from
stdin, and exits 2 for a token no request could carry.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from moderator.cli.style import add_command, add_config_flag, examples
from moderator.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from moderator.settings import LogSettings, Settings

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
            "Serve GET /v1/verdicts, /v1/verdicts/{event_id}, /v1/verdicts/{event_id}/explanation, "
            "/v1/policy-versions/{hash} and /healthz over the audit store, with bearer tokens "
            "from audit.api_tokens (SHA-256 hex of a token -> the tenants it may read). An "
            "explanation says where its row was set as moderator explain does, from policies.dir "
            "(read again when its files change). OpenAPI at /openapi.json (a token needed). "
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
    from moderator.settings import load_settings

    try:
        import uvicorn

        import moderator.audit.read.api  # noqa: F401  (the api extra, checked before the settings)
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

    # The store opens (read-only) on the first request: a URL whose driver is missing fails
    # here instead.
    create_audit_engine(normalize_url(url), read_only=True).dispose()
    app = serve_app(settings)
    from moderator.logs import configure_logging

    sock = listening_socket(args.host, args.port)
    configure_logging(settings.log)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log.level,
        log_config=uvicorn_log_config(settings.log),
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` for uvicorn to serve on; one ConfigError line (exit 2)
    when it cannot be, before anything is logged."""
    from moderator.listen import bind_reason

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--host: cannot listen on {host}:{port}: {bind_reason(exc)}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--port: cannot listen on {host}:{port}: {bind_reason(exc)} (choose a free --port)"
        ) from exc
    return sock


def serve_app(settings: Settings) -> FastAPI:
    """The app `serve` runs: the store at audit.url (opened on the first request that needs
    it), the tokens of audit.api_tokens, and explanations with where their row was set, read
    from policies.dir with the tenancy settings as `moderator explain` reads it."""
    from moderator.audit.read.api import create_app
    from moderator.audit.read.row_origin import PolicyOrigins
    from moderator.cli.audit_query import open_existing_store

    url = settings.audit.url
    origins = PolicyOrigins(settings.policies.dir, settings.tenancy)
    return create_app(lambda: open_existing_store(url), settings.audit.api_tokens, origins)


def uvicorn_log_config(settings: LogSettings) -> dict[str, Any]:
    """uvicorn's logging set-up (a `logging.config.dictConfig` dict): its lines, the access
    log's included, and any other standard-library line written while serving, go to stderr
    as the lines every other command writes. uvicorn sets its loggers' levels from log.level;
    other libraries' lines are written from warning up, as configure_logging has them."""
    from moderator.logs import StderrHandler, stdlib_formatter

    formatter = stdlib_formatter(settings, access_fields)
    handler = {"()": StderrHandler, "formatter": "structlog"}
    floor = "warning" if settings.level in ("debug", "info") else settings.level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structlog": {"()": lambda: formatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": floor.upper()},
    }


_QUERY = re.compile(r"\?\S*")


def access_fields(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor for uvicorn's access log line: `event` http_request with `client`,
    `method`, `path`, `http_version` and `status` in place of its message. The query string is
    left out: audit API queries name tenants, event ids, object keys and content hashes."""
    record = event_dict.get("_record")
    if getattr(record, "name", None) != "uvicorn.access":
        return event_dict
    # uvicorn: access_logger.info('%s - "%s %s HTTP/%s" %d', client, method, path?query, ...)
    fields = event_dict.get("positional_args")
    if isinstance(fields, tuple) and len(fields) == 5:
        client, method, target, http_version, status = fields
        event_dict["event"] = "http_request"
        event_dict["client"] = client
        event_dict["method"] = method
        event_dict["path"] = str(target).partition("?")[0]
        event_dict["http_version"] = http_version
        event_dict["status"] = status
    else:  # a line of another shape: its message, less anything that looks like a query
        event_dict["event"] = _QUERY.sub("", str(event_dict.get("event", "")))
    return event_dict


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
            f"moderator: warning: a token of {len(token)} characters can be guessed; make one "
            "with: openssl rand -hex 32",
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
