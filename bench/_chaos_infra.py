"""Throwaway infrastructure for the chaos harness: its own Postgres and Redis, and restartable processes.

Nothing here touches the machine's own Postgres or Redis: the harness creates a cluster with
`initdb` (as user postgres, its own port and socket directory) and a persistence-less Redis, so it
may kill and restart both at will.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from orchestrator.netutil import free_port


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise SystemExit(f"no {name} under /usr/lib/postgresql/*/bin (install postgresql)")
    return found[-1]


def _as_postgres(args: Sequence[str]) -> list[str]:
    """Run a server binary as the postgres user (initdb refuses root)."""
    if os.geteuid() != 0:
        return list(args)
    runner = shutil.which("runuser")
    return [runner, "-u", "postgres", "--", *args] if runner else ["su", "postgres", "-c", " ".join(args)]


@dataclass
class Postgres:
    """A private cluster in `root`; `stop_immediate()` is a crash (no checkpoint), `start()` recovers."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chaos"

    def init(self) -> None:
        data, sock = self.root / "pgdata", self.root / "pgsock"
        for d in (self.root, sock):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # noqa: S103  (the postgres user must reach its data directory)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                     "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
        self.start()
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE chaos")

    def start(self) -> None:
        # fsync off is safe here: a killed server loses nothing the kernel already has, and the
        # harness crashes the server, never the machine. synchronous_commit stays on, so every
        # acknowledged commit survives `-m immediate`.
        opts = (f"-p {self.port} -k {self.root / 'pgsock'} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB")
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.root / "pgdata"), "-o", opts,
                                     "-l", str(self.root / "postgres.log"), "-w", "-t", "120", "start"]),
                       check=True, capture_output=True)

    def stop_immediate(self) -> None:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.root / "pgdata"), "-m", "immediate",
                                     "-w", "stop"]), check=False, capture_output=True)

    def destroy(self) -> None:
        self.stop_immediate()
        shutil.rmtree(self.root / "pgdata", ignore_errors=True)


@dataclass
class Redis:
    """A private redis-server without persistence: a restart loses every queued message."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", str(self.root)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        import redis

        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise SystemExit("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class Service:
    """One `orchestrator ...` process that the harness may kill -9 and start again."""

    name: str
    args: list[str]
    env: dict[str, str]
    logdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.logdir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (gunicorn and Celery have children) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)

    def logs(self) -> list[Path]:
        return sorted(self.logdir.glob(f"{self.name}-*.log"))
