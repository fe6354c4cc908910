"""Brokers of a test's own, which it may restart: a RabbitMQ node and a Redis server on free
loopback ports, their files under the test's temporary directory.

The machine's RabbitMQ and Redis serve other tests and CI's passes, so they are never the ones
restarted. The private RabbitMQ node has its own name, ports, epmd, cookie (its own HOME) and
configuration file: nothing it reads or writes is the machine's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import redis

from bench.common import free_port, start_process, stop_process_group, wait_for_process, wait_until

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, not Debian's `su rabbitmq` wrapper
START_TIMEOUT = 60


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def rabbitmq_missing() -> bool:
    return not (RABBITMQ_BIN / "rabbitmq-server").exists() or shutil.which("epmd") is None


def redis_missing() -> bool:
    return shutil.which("redis-server") is None


class RabbitNode:
    """`rabbitmq-server` run as a node of its own; `restart()` halts the Erlang VM and boots it
    again on the same files, so durable queues and persistent messages are all that survive."""

    keeps_messages = True

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.name = f"promotions-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        epmd_port = free_port()
        (workdir / "home").mkdir(parents=True)
        (workdir / "plugins").write_text("[].\n")  # no management plugin: no port 15672 to clash on
        # The machine's /etc/rabbitmq/rabbitmq.conf binds 5672; this file replaces it.
        (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (workdir / "rabbitmq-env.conf").write_text("")
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "HOME": str(workdir / "home"),  # where the node and rabbitmqctl find their cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_BASE": str(workdir),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log_path = workdir / "rabbitmq.out"
        # An epmd of its own: one the node started by itself would outlive the test.
        self.epmd = start_process(
            ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
            log_path=workdir / "epmd.out",
            env=self.env,
            cwd=workdir,
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_process(
            [str(RABBITMQ_BIN / "rabbitmq-server")], log_path=self.log_path, env=self.env, cwd=self.workdir
        )
        wait_for_process(
            self.process,
            lambda: _accepts(self.port),
            what=f"RabbitMQ node {self.name}",
            timeout=START_TIMEOUT,
            log_path=self.log_path,
        )
        self.ctl("await_startup")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.ctl("stop")
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.process is not None:
            try:
                self.stop()
            finally:
                stop_process_group(self.process)
        stop_process_group(self.epmd)

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, "-q", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def wait_until_no_consumer_waits(self) -> None:
        """Nothing to wait for: a message pushed to a paused consumer stays in its queue, unacknowledged."""

    def messages(self, queue: str) -> int:
        """Ready and unacknowledged messages in `queue` (0 when it was never declared)."""
        for line in self.ctl("list_queues", "name", "messages", "--no-table-headers").splitlines():
            name, _, count = line.partition("\t")
            if name == queue:
                return int(count)
        return 0


class RedisServer:
    """`redis-server` without persistence (`--save ""`, no append-only file), as a cache-like
    production Redis runs: `restart()` brings it back empty."""

    keeps_messages = False

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.out"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_process(
            # --save "" and no append-only file: nothing outlives a restart.
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            + ["--appendonly", "no"],
            log_path=self.log_path,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            cwd=self.workdir,
        )
        wait_for_process(
            self.process, self._answers, what="redis-server", timeout=START_TIMEOUT, log_path=self.log_path
        )

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process)  # SIGTERM; with nothing to save, nothing is saved

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()

    def wait_until_no_consumer_waits(self) -> None:
        """A paused consumer's pending BRPOP would pop the next message into a socket nobody
        reads; such a pop ends at its 1 s timeout."""
        wait_until(
            lambda: not any("b" in c["flags"] for c in self.client().client_list()),
            timeout=10,
            message="no blocked BRPOP",
        )

    def messages(self, queue: str) -> int:
        """Messages waiting in `queue`, and those a consumer took but has not acknowledged."""
        client = self.client()
        return client.llen(queue) + client.hlen("unacked")
