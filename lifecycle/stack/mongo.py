"""The MongoDB wire-protocol server: ``mongod`` when installed, else FerretDB with SQLite.

FerretDB v1.24.x is built once with the machine's Go into ``CACHE_DIR/ferretdb/VERSION``. A plain
``go install …/cmd/ferretdb@v1.24.2`` builds a binary that panics at start (its
``build/version/version.txt`` is empty in the published module), so we build a copy of the module
source with that file filled in. The code only ever talks pymongo, so production points
``LIFECYCLE_MONGO_URI`` at a real MongoDB replica set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lifecycle.stack.base import Launch, MissingToolError, Service, StackError

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"


class MongoService(Service):
    name = "mongo"

    @property
    def backend(self) -> str:
        chosen = self.settings.mongo_backend
        if chosen == "auto":
            return "mongod" if shutil.which("mongod") else "ferretdb"
        return chosen

    def ports(self) -> list[int]:
        return [self.settings.mongo_port]

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.mongo_port}"

    @property
    def ferretdb_bin(self) -> Path:
        return self.settings.cache_dir / "ferretdb" / FERRETDB_VERSION / "ferretdb"

    def required_tools(self) -> list[tuple[str, str]]:
        if self.backend == "mongod":
            return [("mongod", "install MongoDB or set LIFECYCLE_MONGO_BACKEND=ferretdb")]
        if self.ferretdb_bin.exists():
            return []
        return [("go", "install Go 1.22+ (https://go.dev/doc/install) to build FerretDB")]

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.backend == "ferretdb" and not self.ferretdb_bin.exists():
            self._build_ferretdb()

    def _build_ferretdb(self) -> None:
        if shutil.which("go") is None:
            raise MissingToolError("mongo: `go` is not installed; install Go to build FerretDB")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": os.environ.get("CGO_ENABLED", "1")}
        spec = f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"
        got = subprocess.run(["go", "mod", "download", "-json", spec], capture_output=True, text=True, env=env)
        if got.returncode != 0:
            raise StackError(f"mongo: `go mod download {spec}` failed:\n{(got.stdout + got.stderr)[-2000:]}")
        import json

        src = Path(json.loads(got.stdout)["Dir"])
        with tempfile.TemporaryDirectory(prefix="ferretdb-build-") as tmp:
            work = Path(tmp) / "src"
            shutil.copytree(src, work)
            for path in [work, *work.rglob("*")]:  # the module cache is read-only
                path.chmod(path.stat().st_mode | 0o200)
            (work / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
            out = self.ferretdb_bin.with_suffix(".partial")
            out.parent.mkdir(parents=True, exist_ok=True)
            built = subprocess.run(
                ["go", "build", "-trimpath", "-o", str(out), "./cmd/ferretdb"],
                cwd=work, capture_output=True, text=True, env=env,
            )  # fmt: skip
            if built.returncode != 0:
                raise StackError(f"mongo: building FerretDB failed:\n{(built.stdout + built.stderr)[-2000:]}")
            out.rename(self.ferretdb_bin)

    def launch(self) -> Launch:
        s = self.settings
        if self.backend == "mongod":
            argv = [
                "mongod", "--bind_ip", s.host, "--port", str(s.mongo_port),
                "--dbpath", str(self.data_dir), "--wiredTigerCacheSizeGB", "0.25",
            ]  # fmt: skip
            return Launch(argv=argv)
        argv = [
            str(self.ferretdb_bin), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
            f"--state-dir={self.data_dir}", f"--listen-addr={s.host}:{s.mongo_port}",
            "--debug-addr=-", "--telemetry=disable",
        ]  # fmt: skip
        return Launch(argv=argv)

    def probe(self) -> bool:
        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]]
        with MongoClient(self.settings.mongo_uri, serverSelectionTimeoutMS=1500) as client:
            return bool(client.admin.command("ping").get("ok"))

    def version(self) -> str:
        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]]
        try:
            with MongoClient(self.settings.mongo_uri, serverSelectionTimeoutMS=1500) as client:
                info = client.admin.command("buildInfo")
        except Exception:  # noqa: BLE001 - status shows what it can
            return ""
        ferret = info.get("ferretdbVersion")
        return f"FerretDB {ferret.lstrip('v')}" if ferret else f"MongoDB {info.get('version')}"
