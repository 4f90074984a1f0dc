"""The `openai` engine's connection pools: the connections split into several AsyncClients,
each request going to the one with the fewest open (event-loop thread only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

# Idle pooled connections are closed after this long. The servers run on uvicorn, which closes
# a connection idle for 5 s (--timeout-keep-alive): a client that reuses one at that moment
# gets a dropped connection. Staying under it leaves the closing to the client.
KEEPALIVE_EXPIRY_S = 4.0
# httpcore walks every connection of a pool to place each request, so what a request costs the
# client's CPU grows with the pool's size. The connections are split over pools (one
# AsyncClient each) of at most this many, and each request goes to the pool with the fewest
# requests open: with 64 connections, a request is placed among 8, not 64.
POOL_CONNECTIONS = 8


@dataclass
class Pool:
    """One AsyncClient and how many requests it has open (event-loop thread only)."""

    client: httpx.AsyncClient
    open: int = 0


def pool_sizes(connections: int, most: int = POOL_CONNECTIONS) -> list[int]:
    """`connections` split into pools of at most `most`, as even as can be."""
    count = -(-connections // most)
    size, extra = divmod(connections, count)
    return [size + 1 if i < extra else size for i in range(count)]


def open_requests(pool: Pool) -> int:
    return pool.open
