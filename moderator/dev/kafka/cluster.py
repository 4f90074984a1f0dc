"""A real Apache Kafka cluster on loopback for tests and `moderator dev-stack --kafka apache`.

Each node is one JVM acting as broker and KRaft controller, started from the pinned jars
(moderator.dev.kafka.jars) with its storage, config and log under the work folder:

    <workdir>/node-<i>/server.properties, log4j2.properties, broker.log, data/

The nodes are killed with this process: they are started with a parent-death signal from one
long-lived launcher thread (Linux, where `setpriv` exists), so a crashed test run leaves no JVM
behind. start() returns once the cluster serves clients and transactions
(moderator.dev.kafka.ready). `python -m moderator.dev.kafka.cluster --resolve` resolves the jars
and prints their folder.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from moderator.dev.errors import DevStackError
from moderator.dev.kafka import config as kafka_config
from moderator.dev.kafka.config import NodePorts
from moderator.dev.kafka.jars import KAFKA_VERSION, broker_jars, java_command, resolve_jars
from moderator.dev.kafka.process import Launcher, free_ports, last_line, tail, terminate
from moderator.dev.kafka.ready import wait_ready
from moderator.errors import ConfigError
from moderator.listen import bind_reason

__all__ = ["KAFKA_VERSION", "ApacheKafka", "broker_jars"]

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
_FORMAT_TIMEOUT_S = 120.0
_LOG_NAME = "broker.log"
_FORMAT_LOG = "format.log"


@dataclass
class _Node:
    index: int
    ports: NodePorts
    home: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{kafka_config.LOOPBACK}:{self.ports.client}"

    @property
    def log(self) -> Path:
        return self.home / _LOG_NAME

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ApacheKafka:
    """`brokers` Kafka nodes (each broker + controller) on free loopback ports; a non-zero
    `client_port` is the first node's client port.

    Settings fit for tests (kafka_config.server_properties): internal and auto-created topics
    replicated to min(3, brokers) nodes with a min ISR one lower (at least 1), 4 partitions per
    auto-created topic, no initial rebalance delay. `config` overrides any server property on
    every node. Storage, configs and logs live in `workdir`, or in a temporary folder that
    stop() removes.
    """

    def __init__(
        self,
        brokers: int = 1,
        *,
        workdir: Path | None = None,
        heap_mb: int = 512,
        config: Mapping[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        jars_dir: Path | None = None,
        client_port: int = 0,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        if heap_mb < 128:
            raise ValueError("heap_mb must be at least 128")
        self._count = brokers
        self._client_port = client_port
        self._workdir = workdir
        self._heap_mb = heap_mb
        self._config = dict(config or {})
        self._start_timeout_s = start_timeout_s
        self._jars_dir = jars_dir
        self._root: Path | None = None
        self._owns_root = False
        self._nodes: list[_Node] = []
        self._java = ""
        self._jars = Path()
        self._launcher: Launcher | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ApacheKafka:
        """Format storage, start every node and wait until the cluster serves clients and
        transactions. A second call does nothing. ConfigError when Java or the jars are
        unavailable, or `client_port` cannot be listened on; DevStackError (with the node's
        last log line) when a node fails."""
        if self._nodes:
            return self
        self._java = java_command()
        self._jars = resolve_jars(self._jars_dir)
        self._launcher = Launcher()
        try:
            self._root = self._make_root()
            try:
                ports = free_ports(self._count, self._client_port)
            except OSError as exc:
                where = f"{kafka_config.LOOPBACK}:{self._client_port}"
                raise ConfigError(f"Kafka: cannot listen on {where}: {bind_reason(exc)}") from exc
            self._nodes = [_Node(i, ports[i], self._root / f"node-{i}") for i in range(self._count)]
            self._format(ports)
            for node in self._nodes:
                self._launch(node)
            wait_ready(self._nodes, self._start_timeout_s, transactions=True)
        except BaseException as exc:
            if isinstance(exc, DevStackError):
                exc.add_note(self.log_tails())  # read before stop() deletes a temporary folder
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove the temporary work folder. Safe to call more than once,
        or before start().

        Nodes with a workdir of the caller's get SIGTERM, then SIGKILL after a grace period.
        With a temporary folder they are killed at once: their storage is deleted anyway, and
        the last node of a cluster would spend seconds resigning a quorum that has gone.
        """
        grace = 0.0 if self._owns_root else STOP_GRACE_S
        terminate([n.process for n in self._nodes if n.process is not None], grace)
        for node in self._nodes:
            node.process = None
        self._nodes = []
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None
        if self._root is not None and self._owns_root:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def stop_broker(self, index: int, *, kill: bool = False) -> None:
        """Stop node `index`: SIGKILL with kill=True, else SIGTERM (a controlled shutdown) and
        SIGKILL after a grace period. Its storage stays for start_broker()."""
        node = self._node(index)
        if node.process is None:
            return
        if kill:
            node.process.kill()
            node.process.wait()
        else:
            terminate([node.process], STOP_GRACE_S)
        node.process = None

    def start_broker(self, index: int) -> None:
        """Restart node `index` on its storage and ports; return once every running node
        answers with it in the cluster. Does nothing when it is running."""
        node = self._node(index)
        if node.running:
            return
        self._launch(node)
        try:
            wait_ready(self._nodes, self._start_timeout_s, transactions=False)
        except DevStackError as exc:
            exc.add_note(self.log_tails())
            raise

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients and tests need --------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated host:port of every node, running or not."""
        if not self._nodes:
            raise DevStackError("the Kafka cluster is not started")
        return ",".join(n.address for n in self._nodes)

    @property
    def brokers(self) -> int:
        return self._count

    def address(self, index: int) -> str:
        """host:port of node `index`."""
        return self._node(index).address

    def pid(self, index: int) -> int | None:
        """The JVM's process id of node `index`, None when it is stopped."""
        process = self._node(index).process
        return process.pid if process is not None else None

    def log_path(self, index: int) -> Path:
        """Node `index`'s log: the JVM's output and the broker's log lines (WARN and up)."""
        return self._node(index).log

    def log_tail(self, index: int, lines: int = 40) -> str:
        """The last `lines` lines of node `index`'s log ('' when there is none yet)."""
        return tail(self._node(index).log, lines)

    def log_tails(self, lines: int = 30) -> str:
        """Every node's log tail under a header line (its storage formatting output when the
        node never started): for test failure reports."""
        parts = []
        for node in self._nodes:
            log = node.log if node.log.exists() else node.home / _FORMAT_LOG
            parts.append(f"--- kafka node {node.index} ({log}) ---\n{tail(log, lines)}")
        return "\n".join(parts)

    # -- internals --------------------------------------------------------------------------

    def _node(self, index: int) -> _Node:
        if not self._nodes:
            raise DevStackError("the Kafka cluster is not started")
        if not 0 <= index < len(self._nodes):
            raise IndexError(f"no Kafka node {index}: the cluster has {len(self._nodes)}")
        return self._nodes[index]

    def _make_root(self) -> Path:
        if self._workdir is None:
            self._owns_root = True
            return Path(tempfile.mkdtemp(prefix="moderator-kafka-"))
        self._owns_root = False
        self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    def _format(self, ports: Sequence[NodePorts]) -> None:
        """Write each node's files and format its storage (all nodes at once)."""
        cluster_id = kafka_config.new_cluster_id()
        formatting: list[tuple[_Node, subprocess.Popen[bytes]]] = []
        for node in self._nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            props = kafka_config.server_properties(
                node.index, ports, node.home / "data", self._config
            )
            (node.home / "server.properties").write_text(kafka_config.render_properties(props))
            (node.home / "log4j2.properties").write_text(kafka_config.log4j2_properties())
            command = [
                *self._java_prefix(128),
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                # One argument: an id may start with "-", which argparse would take for a flag.
                f"--cluster-id={cluster_id}",
                "-c",
                str(node.home / "server.properties"),
            ]
            formatting.append((node, self._spawn(command, node.home / _FORMAT_LOG)))
        for node, process in formatting:
            try:
                code = process.wait(_FORMAT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                terminate([p for _, p in formatting], 0)
                raise DevStackError(f"kafka node {node.index}: formatting storage hung") from None
            if code != 0:
                reason = last_line(node.home / _FORMAT_LOG) or f"exit code {code}"
                raise DevStackError(f"kafka node {node.index}: cannot format storage: {reason}")

    def _java_prefix(self, heap_mb: int) -> list[str]:
        # Several nodes share a couple of cores in tests: SerialGC, a small starting heap, and
        # the quick compiler only (starts in about two thirds of the time, with less memory).
        return [
            self._java,
            f"-Xmx{heap_mb}m",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            "-cp",
            f"{self._jars}/*",
        ]

    def _launch(self, node: _Node) -> None:
        command = [
            *self._java_prefix(self._heap_mb),
            f"-Dlog4j2.configurationFile={node.home / 'log4j2.properties'}",
            "kafka.Kafka",
            str(node.home / "server.properties"),
        ]
        node.process = self._spawn(command, node.log)

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        if self._launcher is None:
            raise DevStackError("the Kafka cluster is not started")
        return self._launcher.spawn(command, log)


def main(argv: Sequence[str] | None = None) -> int:
    """`--resolve`: resolve the jars (Maven, once) and print their folder; exit 2 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m moderator.dev.kafka.cluster",
        description=f"The pinned Apache Kafka {KAFKA_VERSION} broker for tests and dev-stack.",
    )
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="resolve the broker's jars (Maven Central, once) and print their folder",
    )
    args = parser.parse_args(argv)
    if not args.resolve:
        parser.print_usage(sys.stderr)
        return 2
    try:
        print(broker_jars())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
