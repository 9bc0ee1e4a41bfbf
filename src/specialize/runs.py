"""Run directories and the run registry.

A run lives in `<runs_dir>/<run-id>/` (layout in docs/architecture.md) and has a row in the registry: its config, status,
metrics, evaluations and artifacts. The registry is a SQLite file by default and any SQLAlchemy URL (PostgreSQL)
when a team shares it; SQLAlchemy Core keeps the SQL portable without an ORM layer to maintain.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from specialize.errors import ConfigError, NotFoundError, RunNotFoundError

if TYPE_CHECKING:
    from specialize.config import RunConfig

RUN_SUBDIRS = ("data", "train", "eval")
T = TypeVar("T")


def new_run_id(name: str) -> str:
    """A sortable, unique id: name, UTC time and a short random suffix."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's directory."""

    root: Path

    @property
    def id(self) -> str:
        return self.root.name

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def config(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def model_card(self) -> Path:
        return self.root / "model_card.md"

    @classmethod
    def create(cls, runs_dir: Path, run_id: str) -> RunDir:
        root = runs_dir / run_id
        root.mkdir(parents=True, exist_ok=False)
        for sub in RUN_SUBDIRS:
            (root / sub).mkdir()
        return cls(root)


def build_run_dir(runs_dir: Path, run_id: str, build: Callable[[RunDir], T]) -> tuple[RunDir, T]:
    """A new run directory, filled by `build` under a hidden `.partial` name and renamed into place once it returns.

    A failure in `build` (bad data, an interrupt) removes the staging folder, so a run directory that exists is
    never half-written.

    Returns:
        The run directory under its final name, and what `build` returned (its paths still name the staging
        folder; rebase them on the returned directory).
    """
    staging = RunDir.create(runs_dir, f".{run_id}.partial")
    try:
        built = build(staging)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    return RunDir(staging.root.rename(runs_dir / run_id)), built


def write_atomic(path: Path, text: str) -> None:
    """Write text to a sibling temporary file, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Enforce foreign keys, and let a server's many writers queue for the lock instead of failing at once."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def now() -> datetime:
    """UTC time without tzinfo, as every registry timestamp is stored."""
    return datetime.now(UTC).replace(tzinfo=None)


class Registry:
    """Runs, their metrics and artifacts, in one SQL database."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(f"registry: cannot use {url!r} ({exc}); give a SQLAlchemy URL") from None
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        meta = sa.MetaData()
        self.runs = sa.Table(
            "runs",
            meta,
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("base_model", sa.String(500), nullable=False),
            sa.Column("run_dir", sa.String(1000), nullable=False),
            sa.Column("parent_run", sa.String(200)),
            sa.Column("config", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("finished_at", sa.DateTime),
        )
        self.metrics = sa.Table(
            "metrics",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
            sa.Column("stage", sa.String(50), nullable=False),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("value", sa.Float, nullable=False),
            sa.Column("step", sa.Integer),
            sa.Column("system", sa.String(100)),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
        self.artifacts = sa.Table(
            "artifacts",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False, index=True),
            sa.Column("kind", sa.String(50), nullable=False),
            sa.Column("path", sa.String(1000), nullable=False),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
        # An alias (`production`, `candidate`, any name) points at one run of a run name; every move is kept, so
        # a rollback knows where to go and monitoring knows which run answered `NAME@alias` at any moment.
        self.aliases = sa.Table(
            "aliases",
            meta,
            sa.Column("name", sa.String(200), primary_key=True),
            sa.Column("alias", sa.String(100), primary_key=True),
            sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False),
            sa.Column("updated_at", sa.DateTime, nullable=False),
        )
        self.alias_history = sa.Table(
            "alias_history",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(200), nullable=False, index=True),
            sa.Column("alias", sa.String(100), nullable=False),
            sa.Column("run_id", sa.String(200), sa.ForeignKey("runs.id"), nullable=False),
            sa.Column("previous_run", sa.String(200)),
            sa.Column("action", sa.String(20), nullable=False),
            sa.Column("note", sa.Text),
            sa.Column("created_at", sa.DateTime, nullable=False),
        )
        meta.create_all(self.engine)

    def create_run(
        self,
        run: RunDir,
        name: str,
        base_model: str,
        config: dict[str, Any],
        parent_run: str | None = None,
    ) -> None:
        """A run's row, status `running`; `parent_run` is the run it descends from (a trial's study, say)."""
        with self.engine.begin() as conn:
            conn.execute(
                self.runs.insert().values(
                    id=run.id,
                    name=name,
                    status="running",
                    base_model=base_model,
                    run_dir=str(run.root.resolve()),
                    parent_run=parent_run,
                    config=json.dumps(config),
                    created_at=now(),
                )
            )

    def set_status(self, run_id: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.runs.update().where(self.runs.c.id == run_id).values(status=status, finished_at=None)
            )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.runs.update()
                .where(self.runs.c.id == run_id)
                .values(status=status, error=error, finished_at=now())
            )

    def log_metrics(
        self,
        run_id: str,
        stage: str,
        values: dict[str, float],
        step: int | None = None,
        system: str | None = None,
    ) -> None:
        rows = [
            {
                "run_id": run_id,
                "stage": stage,
                "name": k,
                "value": float(v),
                "step": step,
                "system": system,
                "created_at": now(),
            }
            for k, v in values.items()
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self.metrics.insert(), rows)

    def delete_metrics_after(self, run_id: str, stage: str, step: int) -> None:
        """Forget metrics logged after `step`: a resumed run logs those steps again from its checkpoint."""
        m = self.metrics.c
        with self.engine.begin() as conn:
            conn.execute(
                self.metrics.delete().where((m.run_id == run_id) & (m.stage == stage) & (m.step > step))
            )

    def add_artifact(self, run_id: str, kind: str, path: Path) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.artifacts.insert().values(run_id=run_id, kind=kind, path=str(path), created_at=now())
            )

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(self.runs.select().where(self.runs.c.id == run_id)).mappings().first()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in the registry; `specialize runs` lists the runs")
        return dict(row)

    def list_runs(self, parent_run: str | None = None) -> list[dict[str, Any]]:
        """Every run, oldest first; with `parent_run`, only its children (a study's trials and runs)."""
        query = self.runs.select().order_by(self.runs.c.created_at)
        if parent_run is not None:
            query = query.where(self.runs.c.parent_run == parent_run)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [dict(r) for r in rows]

    def get_metrics(self, run_id: str, stage: str | None = None) -> list[dict[str, Any]]:
        query = self.metrics.select().where(self.metrics.c.run_id == run_id)
        if stage is not None:
            query = query.where(self.metrics.c.stage == stage)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(self.metrics.c.id)).mappings().all()]

    def get_artifacts(self, run_id: str) -> list[dict[str, Any]]:
        query = self.artifacts.select().where(self.artifacts.c.run_id == run_id).order_by(self.artifacts.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def set_alias(
        self, run_id: str, alias: str, action: str = "promote", note: str | None = None
    ) -> str | None:
        """Point `alias` of the run's name at `run_id`, and record the move; returns the run it pointed at before."""
        name = self.get_run(run_id)["name"]
        a = self.aliases.c
        with self.engine.begin() as conn:
            where = (a.name == name) & (a.alias == alias)
            previous = conn.execute(self._sa.select(a.run_id).where(where)).scalar()
            moment = now()
            if previous is None:
                conn.execute(
                    self.aliases.insert().values(name=name, alias=alias, run_id=run_id, updated_at=moment)
                )
            else:
                conn.execute(self.aliases.update().where(where).values(run_id=run_id, updated_at=moment))
            conn.execute(
                self.alias_history.insert().values(
                    name=name,
                    alias=alias,
                    run_id=run_id,
                    previous_run=previous,
                    action=action,
                    note=note,
                    created_at=moment,
                )
            )
        return previous

    def alias_target(self, name: str, alias: str) -> str | None:
        """The run `NAME@alias` names now, or None."""
        a = self.aliases.c
        with self.engine.connect() as conn:
            found = conn.execute(
                self._sa.select(a.run_id).where((a.name == name) & (a.alias == alias))
            ).scalar()
        return None if found is None else str(found)

    def list_aliases(self, name: str | None = None) -> list[dict[str, Any]]:
        query = self.aliases.select().order_by(self.aliases.c.name, self.aliases.c.alias)
        if name is not None:
            query = query.where(self.aliases.c.name == name)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def alias_history_of(self, name: str | None = None, alias: str | None = None) -> list[dict[str, Any]]:
        """Every move of the aliases (of `name`, of `alias`), oldest first."""
        h = self.alias_history.c
        query = self.alias_history.select().order_by(h.id)
        if name is not None:
            query = query.where(h.name == name)
        if alias is not None:
            query = query.where(h.alias == alias)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def rollback_target(self, name: str, alias: str) -> tuple[str, str]:
        """(the run `NAME@alias` names now, the run it named before that run was promoted to it).

        Rollbacks walk back one promotion at a time: after promote A, B, C, a rollback goes to B and the next to A.

        Raises:
            NotFoundError: no such alias, or nothing before its first run.
        """
        current = self.alias_target(name, alias)
        if current is None:
            raise NotFoundError(
                f"no alias {name}@{alias}; `specialize aliases` lists them, `specialize promote RUN --alias "
                f"{alias}` makes one"
            )
        promoted = [
            h
            for h in self.alias_history_of(name, alias)
            if h["action"] == "promote" and h["run_id"] == current
        ]
        before = promoted[-1]["previous_run"] if promoted else None
        if before is None:
            raise NotFoundError(
                f"{name}@{alias} names {current}, its first run: there is nothing to roll back to"
            )
        return current, str(before)


def open_run(run: str, registry_url: str | None = None) -> tuple[RunDir, RunConfig, Registry]:
    """A run's directory, resolved config and registry, from its id or its directory.

    Every command that works on an existing run (resume, eval, export) starts here, so a run is named the same way
    everywhere: by id (looked up in `registry_url`, default the one in `runs/`), by `NAME@alias`, or by the path
    of its directory.

    Raises:
        RunNotFoundError: the id is not in the registry, or the directory's run is not in its registry.
    """
    from specialize.config import DEFAULT_REGISTRY, load_resolved

    path = Path(run)
    if not (path / "config.resolved.yaml").is_file():
        registry = Registry(registry_url or DEFAULT_REGISTRY)
        path = Path(registry.get_run(resolve_alias(registry, run))["run_dir"])
    run_dir = RunDir(path)
    config = load_resolved(run_dir.config)
    registry = Registry(registry_url or config.registry_url)
    registry.get_run(run_dir.id)
    return run_dir, config, registry


def resolve_alias(registry: Registry, ref: str) -> str:
    """The run id `ref` names: `NAME@alias` is looked up in the aliases, anything else is a run id already.

    Raises:
        NotFoundError: `NAME@alias` names no alias.
    """
    name, at, alias = ref.partition("@")
    if not at:
        return ref
    target = registry.alias_target(name, alias)
    if target is None:
        raise NotFoundError(
            f"no alias {ref!r} in the registry; `specialize aliases` lists them, `specialize promote RUN --alias "
            f"{alias}` makes one"
        )
    return target
