"""The search space of a study: the `search:` section of the run config, or a default one, and how a trial's
values become the config it trains with.

Each key is a dotted config path (`train.learning_rate`) and each value a distribution (`config.SearchParam`);
the Optuna parameter of a key has the key as its name, so a study's trials read as config overrides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specialize.config import RunConfig, SearchParam

if TYPE_CHECKING:
    import optuna


def default_space(config: RunConfig) -> dict[str, SearchParam]:
    """What is worth searching when `search:` is absent: the learning rate, the adapter's rank, the length of
    training and the batch size (wider learning rates for an adapter than for every weight), and DPO's beta."""
    t = config.train
    space = {
        "train.learning_rate": {"log_uniform": [3e-5, 3e-3] if t.adapter else [3e-6, 1e-4]},
        "train.epochs": {"choice": [1, 2, 3]},
        "train.batch_size": {"choice": [4, 8, 16]},
    }
    if t.adapter:
        space["train.lora.rank"] = {"choice": [4, 8, 16, 32]}
    if t.method == "dpo":
        space["train.dpo_beta"] = {"log_uniform": [0.03, 0.5]}
    return {key: SearchParam.model_validate(value) for key, value in space.items()}


def space_of(config: RunConfig) -> dict[str, SearchParam]:
    """The config's `search:` section, or the default space."""
    return dict(config.search) if config.search else default_space(config)


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """One value per key, drawn by the study's sampler."""
    params: dict[str, Any] = {}
    for key, param in space.items():
        v = param.values
        if param.kind == "choice":
            params[key] = trial.suggest_categorical(key, v)
        elif param.kind == "int":
            params[key] = trial.suggest_int(key, v[0], v[1])
        else:
            params[key] = trial.suggest_float(key, v[0], v[1], log=param.kind == "log_uniform")
    return params


def apply(config: RunConfig, params: dict[str, Any], **top: Any) -> RunConfig:
    """`config` with each dotted key set to its value and without `search:`; `top` replaces top-level keys
    (name, say). The values were checked against the config when it was loaded, so this validates cleanly."""
    doc = config.model_dump(mode="json", exclude={"search"})
    for key, value in params.items():
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return RunConfig.model_validate({**doc, **top})
