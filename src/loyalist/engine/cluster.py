"""A real Spark standalone cluster on the loopback interface: one master and N workers, started and stopped
by the caller (the Spark tests and bench/spark.py use it to run the analysis on a cluster, not only local mode).

The processes are Spark's own daemons from the pyspark package (`bin/spark-class
org.apache.spark.deploy.master.Master` / `...worker.Worker`), bound to 127.0.0.1 on free ports, each in its
own process group so that stopping the cluster ends exactly the processes it started (and the executors and
Python workers they spawned). Nothing here is hand-written scheduling: it only launches and waits.

    with LoopbackCluster(workers=2, cores=1, memory="1g") as cluster:
        spark = spark_session(cluster.url, conf=cluster.session_conf())
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from loyalist.errors import LoyalistError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    try:
        from pyspark.find_spark_home import _find_spark_home
    except ImportError:
        raise LoyalistError("the Spark engine needs pyspark: pip install 'loyalist[spark]'") from None
    return Path(_find_spark_home())


@dataclass
class LoopbackCluster:
    """Spark standalone master + `workers` workers on 127.0.0.1 (`cores` cores and `memory` each)."""

    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    timeout: float = 90.0
    folder: Path | None = None
    url: str = ""
    ui_port: int = 0
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        home = spark_home()
        env.update(SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_HOSTNAME="localhost",
                   PYSPARK_PYTHON=sys.executable, SPARK_LOG_DIR=str(self.folder / "logs"),
                   SPARK_WORKER_DIR=str(self.folder / "work"))
        return env

    def _launch(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=self._env(),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self._procs.append(proc)
        return proc

    def start(self) -> "LoopbackCluster":
        if self.folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loyalist-spark-")
            self.folder = Path(self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "work").mkdir(exist_ok=True)
        port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{port}"
        self._launch("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                "--port", str(port), "--webui-port", str(self.ui_port)])
        self._wait(lambda s: s is not None, "the master")
        for i in range(self.workers):
            self._launch(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                        "--port", str(free_port()), "--webui-port", str(free_port()),
                                        "--cores", str(self.cores), "--memory", self.memory,
                                        "--work-dir", str(self.folder / "work"), self.url])
        self._wait(lambda s: s is not None and s.get("aliveworkers", 0) >= self.workers,
                   f"{self.workers} workers to register")
        return self

    def status(self) -> dict | None:
        """The master's JSON status (workers, cores, running applications), or None while it is not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                self.stop()
                raise LoyalistError(f"a Spark daemon exited while waiting for {what}; logs in {self.folder}")
            if ready(self.status()):
                return
            time.sleep(0.5)
        self.stop()
        raise LoyalistError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    def session_conf(self, executor_memory: str | None = None) -> dict[str, str]:
        """Session settings for an application on this cluster: every worker's core, loopback driver."""
        return {"spark.cores.max": str(self.workers * self.cores),
                "spark.executor.cores": str(self.cores),
                "spark.executor.memory": executor_memory or self.memory,
                "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}

    def stop(self) -> None:
        """End the daemons this object started (workers first), each by its own process group id."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.folder = None

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
