"""Which models a server answers for: its base model and every finished run fine-tuned from it.

A run made by a fine-tuning job is also answered for by the job's model id (`ft:<base>:<suffix>:<job>`), which
the server's job store records (`aliases`), and both ids belong to the API key that created the job: another key
is told they do not exist, as it is for that key's files and jobs (an admin key sees every model).

A run finished after the server started is found on its first request: a model id the server does not know is
looked up in the registry again before it is refused.

`NAME@alias` (`banking77@production`) is the run the registry's alias names at the moment of the request: the
alias is read on every such request, so `specialize promote` and `rollback` take effect without a restart. A
request holds the adapter it was given, so requests in flight during a move finish on the old one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from specialize.config import load_resolved
from specialize.errors import NotFoundError
from specialize.models.engine import Adapter
from specialize.runs import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A model id clients may ask for; `adapter` is None for the base model itself."""

    id: str
    adapter: Adapter | None
    system_prompt: str | None
    created: int  # unix time, as OpenAI's model objects carry
    owner: str | None = None  # the API key whose fine-tuning job made it; None: every key's

    def visible_to(self, key_id: str | None, admin: bool) -> bool:
        return admin or self.owner is None or self.owner == key_id


class ServedModels:
    """The base model and the adapters of runs on it, by model id.

    `aliases` gives the runs of fine-tuning jobs, the other id each is served as (None until its job has
    succeeded) and the API key that owns both (run id -> (model id, key id)), read again whenever the registry is.
    """

    def __init__(
        self,
        base_name: str,
        base_path: Path,
        registry: Registry,
        runs: list[str] | None = None,
        aliases: Callable[[], dict[str, tuple[str | None, str | None]]] | None = None,
    ) -> None:
        self.base = ServedModel(base_name, None, None, int(base_path.stat().st_mtime))
        self._base_path = base_path.resolve()
        self._registry = registry
        self._aliases = aliases or dict
        self._only = set(runs) if runs else None
        self._models: dict[str, ServedModel] = {base_name: self.base}
        self._aliases_served: set[str] = set()
        self._lock = threading.Lock()
        if runs:
            for run_id in runs:
                if not self._from_run(self._registry.get_run(run_id)):
                    raise NotFoundError(
                        f"run {run_id!r} cannot be served on {base_name}: it is not finished, has no adapter "
                        f"(a full fine-tune: export it with `specialize export {run_id} --format merged` and "
                        "serve that as --base), or was trained from another base model"
                    )
        self.refresh()

    def refresh(self) -> None:
        """Add every servable run in the registry (or in the `runs` the server was started with)."""
        found: dict[str, ServedModel] = {}
        aliases = self._aliases()
        for run in self._registry.list_runs():
            if self._only is None or run["id"] in self._only:
                found.update((model.id, model) for model in self._from_run(run, aliases.get(run["id"])))
        with self._lock:
            self._models.update(found)

    def get(self, model_id: str, key_id: str | None, admin: bool) -> ServedModel:
        """The model `model_id` as the key `key_id` may see it; another key's model is missing, like an unknown
        one."""
        with self._lock:
            model = self._models.get(model_id)
        name, at, alias = model_id.partition("@")
        if model is None and at and name and alias:
            return self._aliased(model_id, name, alias, key_id, admin)
        if model is None or not model.visible_to(key_id, admin):
            self.refresh()  # a run finished (or a job succeeded) since
            with self._lock:
                model = self._models.get(model_id)
        if model is None or not model.visible_to(key_id, admin):
            raise NotFoundError(
                f"The model `{model_id}` does not exist; GET /v1/models lists the served models"
            )
        return model

    def list(self, key_id: str | None, admin: bool) -> list[ServedModel]:
        """The models the key `key_id` may see, and the aliases that name one of them."""
        self.refresh()
        with self._lock:
            models = [m for m in self._models.values() if m.visible_to(key_id, admin)]
        by_id = {m.id: m for m in models}
        for a in self._registry.list_aliases():
            target = by_id.get(a["run_id"])
            if target is not None:
                models.append(dataclasses.replace(target, id=f"{a['name']}@{a['alias']}"))
        return models

    def known(self, model_id: str) -> bool:
        """Whether `model_id` is a model this server has served or listed (for some key); reads no registry."""
        with self._lock:
            return model_id in self._models or model_id in self._aliases_served

    def _aliased(self, model_id: str, name: str, alias: str, key_id: str | None, admin: bool) -> ServedModel:
        """The run `NAME@alias` names now, served under that id."""
        run_id = self._registry.alias_target(name, alias)
        if run_id is None:
            raise NotFoundError(
                f"The model `{model_id}` does not exist: no run is {model_id}; `specialize aliases` lists the "
                "aliases, GET /v1/models the served models"
            )
        model = dataclasses.replace(self.get(run_id, key_id, admin), id=model_id)
        with self._lock:
            self._aliases_served.add(model_id)
        return model

    def _from_run(
        self, run: dict[str, Any], alias: tuple[str | None, str | None] | None = None
    ) -> tuple[ServedModel, ...]:
        """The model ids a run is served as: its id, and `alias` (its fine-tuning job's model id and owner); none
        if unservable."""
        if run["status"] != "completed":
            return ()
        adapter = Path(run["run_dir"]) / "train" / "adapter"
        if not (adapter / "adapter_config.json").is_file() or not self._same_base(run["base_model"]):
            return ()
        config = load_resolved(Path(run["run_dir"]) / "config.resolved.yaml")
        use_dora = bool(json.loads((adapter / "adapter_config.json").read_text()).get("use_dora"))
        model = ServedModel(
            run["id"],
            Adapter(run["id"], adapter, use_dora),
            config.data.system_prompt,
            int(run["created_at"].replace(tzinfo=UTC).timestamp()),
            None if alias is None else alias[1],
        )
        if alias is None or alias[0] is None:
            return (model,)
        return model, dataclasses.replace(model, id=alias[0])

    def _same_base(self, base_model: str) -> bool:
        path = Path(base_model).expanduser()
        if path.is_dir():
            return path.resolve() == self._base_path
        return base_model.lower() == self.base.id.lower()
