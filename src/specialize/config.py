"""One YAML file describes one run; this module reads, validates and saves it.

Reads a YAML config plus dotted `--set key=value` overrides, validates every value with pydantic (unknown keys are
errors that name the key, all problems are reported at once) and resolves data paths relative to the config file.
`save_resolved` writes `config.resolved.yaml` into a run: every value, defaults included, with package versions
and the git revision, so a run can be reproduced from its directory alone.
"""

from __future__ import annotations

import difflib
import subprocess
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from specialize.errors import ConfigError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_REGISTRY = "sqlite:///runs/registry.db"


# The error type of a rule across keys (its message names the keys and the fix, so it is shown as it is).
RULE = "config_rule"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DataFormat = Literal["auto", "chat", "sharegpt", "alpaca", "completion", "preference", "feedback", "text"]
# The row keys a `data.columns` mapping may fill; each format reads a subset of them (see data/formats.py).
CanonicalColumn = Literal[
    "messages",
    "conversations",
    "system",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "text",
]


class PiiConfig(_Section):
    """What to do with personal data found in the examples (e-mail, phone, card, IBAN, IP, national id, names)."""

    mode: Literal["report", "mask", "drop"] = Field(
        "report",
        description="report: count only; mask: replace with [KIND] placeholders; drop: reject the row.",
    )
    names: bool = Field(
        False, description="Also find person names with spaCy (needs spacy + en_core_web_sm)."
    )


class DedupeConfig(_Section):
    """Exact and near-duplicate removal; removed rows go to rejects.jsonl with the row they repeat."""

    exact: bool = True
    near: bool = Field(True, description="MinHash near-duplicates, within and across splits.")
    threshold: float = Field(
        0.85,
        gt=0.5,
        le=1.0,
        description="Word 3-gram Jaccard similarity at which rows count as near-duplicates.",
    )


class BiasConfig(_Section):
    """Groups whose label distributions the audit compares: by a row field, or by keyword lists."""

    field: str | None = Field(None, description="Row key whose value names the group (e.g. gender, region).")
    keywords: dict[str, list[str]] = Field(
        default_factory=dict, description="Group name -> words; a row is in every group whose words it uses."
    )


class DataConfig(_Section):
    """Where the examples come from and how they become training sequences."""

    train: Path = Field(
        description="Training file: JSONL, JSON, CSV/TSV, Parquet or text (format auto-detected)."
    )
    validation: Path | None = Field(None, description="Validation file; split off `train` when absent.")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of train held out if no file.")
    format: DataFormat = Field("auto", description="Row format; auto detects it from the rows' keys.")
    columns: dict[CanonicalColumn, str] = Field(
        default_factory=dict, description="Format key -> the file's column, e.g. {instruction: question}."
    )
    label_field: str = Field(
        "label", description="Row key holding the gold label of a classification example."
    )
    labels: list[str] | None = Field(None, description="Declared label set; any other label is an error.")
    group_field: str | None = Field(
        None, description="Row key of a document/group; a group never spans splits."
    )
    system_prompt: str | None = Field(None, description="System message put before every conversation.")
    min_tokens: int = Field(1, ge=1, description="Shorter examples (templated, in tokens) go to rejects.")
    max_tokens: int = Field(1024, gt=8, description="Longer examples (templated, in tokens) go to rejects.")
    max_train_examples: int | None = Field(None, gt=0, description="Keep a seeded sample of this many.")
    max_per_label: int | None = Field(
        None, gt=0, description="Downsample any training label above this many (seeded); for imbalanced sets."
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    bias: BiasConfig = Field(default_factory=BiasConfig)
    tokens_per_second: float | None = Field(
        None,
        gt=0,
        description="Training throughput for the audit's time estimate; default scales a CPU figure.",
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> DataConfig:
        if self.min_tokens >= self.max_tokens:
            raise ValueError(
                f"data.min_tokens ({self.min_tokens}) must be below data.max_tokens ({self.max_tokens})"
            )
        return self


class LoraConfig(_Section):
    """Low-rank adapter shape (LoRA, or DoRA with `train.adapter: dora`)."""

    rank: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    rslora: bool = Field(False, description="Scale by alpha/sqrt(rank) instead of alpha/rank.")


class CheckpointConfig(_Section):
    """How often training state is saved, so a killed run resumes where it stopped."""

    every: int = Field(50, gt=0, description="Save every this many optimizer steps.")
    keep: int = Field(2, gt=0, description="Checkpoints kept; older ones are deleted.")


class EarlyStoppingConfig(_Section):
    """Stop when the validation loss stops improving, and keep the best weights."""

    eval_every: int = Field(50, gt=0, description="Compute the validation loss every this many steps.")
    patience: int = Field(3, gt=0, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest decrease that counts as an improvement.")


class OnPolicyConfig(_Section):
    """How the on-policy methods (`online_dpo`, `grpo`) sample from the model being trained, and GRPO's update."""

    k: int = Field(
        4,
        ge=2,
        le=64,
        description="Samples per prompt: online DPO pairs the best with the worst; GRPO's group.",
    )
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature.")
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: the smallest set of tokens reaching top_p."
    )
    max_new_tokens: int = Field(128, gt=0, description="Longest sampled answer, in tokens.")
    clip: float = Field(0.2, gt=0, lt=1, description="GRPO: the probability ratio is clipped to 1 +- clip.")
    kl: float = Field(
        0.0,
        ge=0,
        description="GRPO: weight of the KL term to the base model (adapter off); 0 skips that pass.",
    )


class KtoConfig(_Section):
    """KTO's settings (Ethayarajh et al., 2024): unpaired answers rated good or bad."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the base model.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the answers rated good.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the answers rated bad.")


TrainMethod = Literal["sft", "dpo", "orpo", "kto", "reward", "online_dpo", "grpo"]
# Methods whose loss needs the base model as a reference (the adapter switched off).
NEEDS_REFERENCE = {"dpo": "DPO", "kto": "KTO", "online_dpo": "online DPO"}
ON_POLICY = ("online_dpo", "grpo")

TrainDevice = Literal["auto", "cpu", "cuda"]
TrainPrecision = Literal[
    "auto", "float32", "bfloat16"
]  # no float16: it needs loss scaling, bfloat16 does not


class TrainConfig(_Section):
    """How the base model is fine-tuned."""

    method: TrainMethod = Field(
        "sft",
        description="sft: learn the assistant answers; dpo, orpo: prefer each pair's chosen answer; kto: answers "
        "rated good or bad; reward: a reward model on pairs; online_dpo, grpo: learn from the model's own "
        "samples scored by `reward:`.",
    )
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO and online DPO: how far the policy may move from the base model."
    )
    orpo_lambda: float = Field(
        0.1, gt=0, description="ORPO: weight of the odds-ratio term beside the SFT loss."
    )
    kto: KtoConfig = Field(default_factory=KtoConfig)
    onpolicy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    adapter: Literal["lora", "dora"] | None = Field("lora", description="null fine-tunes every weight.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    device: TrainDevice = Field("auto", description="auto: a CUDA GPU when PyTorch sees one, else the CPU.")
    precision: TrainPrecision = Field(
        "auto",
        description="auto: bfloat16 autocast on a GPU with bfloat16 units, float32 elsewhere (the CPU's fast path).",
    )
    log_every: int = Field(5, gt=0, description="Record the loss every this many steps.")
    compile: bool = Field(
        False,
        description="CUDA only: torch.compile each decoder layer, fewer kernel launches where they bind a small "
        "model's step; refused on the CPU.",
    )
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig | None = Field(None, description="null trains for the full length.")

    @model_validator(mode="after")
    def _reference_needs_an_adapter(self) -> TrainConfig:
        name = NEEDS_REFERENCE.get(self.method) or (
            "GRPO's KL term" if self.method == "grpo" and self.onpolicy.kl else None
        )
        if name and self.adapter is None:
            raise PydanticCustomError(
                RULE,
                "train.method {method} takes its reference model from the base under the adapter; set "
                "train.adapter to lora or dora (full fine-tuning with {name} is not supported)",
                {"method": self.method, "name": name},
            )
        if self.compile and self.device == "cpu":
            raise PydanticCustomError(
                RULE,
                "train.compile compiles for a CUDA GPU and train.device is cpu; set train.compile to false "
                "(on a CPU the packed pass is what saves time, and compiling it costs more than it gains)",
            )
        if self.method == "kto" and self.batch_size < 2:
            raise PydanticCustomError(
                RULE,
                "train.method kto needs train.batch_size of 2 or more: its KL estimate pairs each prompt with "
                "another example's answer in the batch",
            )
        return self


class LabelReward(_Section):
    """1 when the answer is the row's gold label (case, spacing and outer punctuation aside), else 0."""

    type: Literal["label"]


class NumberReward(_Section):
    """1 when the answer's final number equals the reference answer's (GSM8K style), else 0."""

    type: Literal["number"]
    form: Literal["strict", "lenient"] = Field(
        "strict", description="strict: the number after `####`; lenient: the last number in the answer."
    )


class ExactMatchReward(_Section):
    """1 when the answer equals the reference answer (case and spacing aside), else 0."""

    type: Literal["exact_match"]


class FunctionReward(_Section):
    """A Python function `module:function(prompt, completion, row) -> float`."""

    type: Literal["function"]
    function: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:function; the module is imported from the Python path or the current folder.",
    )


class ModelReward(_Section):
    """A reward model trained by specialize (`train.method: reward`): its scalar head scores each answer."""

    type: Literal["model"]
    run: str = Field(description="The reward model's run: its id in the registry, or its run directory.")
    batch_size: int = Field(8, gt=0, description="Answers scored per forward pass.")


class JudgeReward(_Section):
    """An LLM judge at an OpenAI-compatible endpoint scores each answer against a rubric."""

    type: Literal["judge"]
    url: str = Field(pattern=r"^https?://", description="Base URL of the API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The judge's model name at that endpoint.")
    rubric: str = Field(min_length=1, description="What a good answer does; the judge scores against it.")
    max_score: int = Field(
        10, ge=1, description="The judge scores 0..max_score; the reward is score / max_score."
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the API key (never the key itself: configs are saved).",
    )
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one verdict.")
    concurrency: int = Field(4, ge=1, le=64, description="Verdicts requested at once.")


RewardConfig = Annotated[
    LabelReward | NumberReward | ExactMatchReward | FunctionReward | ModelReward | JudgeReward,
    Field(discriminator="type"),
]
REWARD_TYPES = ("label", "number", "exact_match", "function", "model", "judge")


EvalSystem = Literal["base_zero_shot", "base_few_shot", "base_rag", "fine_tuned", "fine_tuned_rag"]


class EvalConfig(_Section):
    """What the fine-tuned model is compared against, on the validation split."""

    systems: list[EvalSystem] = Field(default_factory=lambda: list(get_args(EvalSystem)))
    few_shot_k: int = Field(3, ge=1, le=16, description="Training examples put in a few-shot prompt.")
    few_shot_selection: Literal["random", "similarity"] = Field(
        "random",
        description="random: one seeded draw for every question; similarity: the most similar (BM25) per question.",
    )
    rag_k: int = Field(3, ge=1, le=16, description="Retrieved examples or passages put in a RAG prompt.")
    rag_documents: Path | None = Field(
        None,
        description="Folder of .txt/.md documents the RAG systems retrieve passages from; default: training "
        "examples as demonstrations.",
    )
    max_examples: int | None = Field(
        None,
        gt=0,
        description="Evaluate on a seeded sample of this many, stratified by label for classification.",
    )
    exclude_examples: Path | None = Field(
        None,
        description="A JSONL of prepared examples (rows with a `source`) left out of the evaluation, e.g. the "
        "validation sample a hyperparameter study ranked its trials on: its final runs are compared on the other "
        "validation rows, not on those that chose the winner.",
    )
    free_answers: bool = Field(
        False,
        description="Classification: also let each system answer freely and report how often the answer is no "
        "label at all (invalid_answer_rate) and the accuracy of the free answers.",
    )
    scoring: Literal["raw", "length", "calibrated", "pmi", "best"] = Field(
        "best",
        description="Classification and multiple choice, every system alike: raw label log-probabilities, per "
        "label token (length), divided by the label prior under content-free inputs (calibrated, Zhao et al. "
        "2021) or after the bare instruction (pmi, Holtzman et al. 2021); best: each system's best on the "
        "validation split, kept for later test files. Every variant is reported either way.",
    )


SearchKind = Literal["log_uniform", "uniform", "int", "choice"]
# What `specialize tune` may vary. The data are prepared once per study, so of `data:` only the sample size (a
# seeded subset of the prepared split, the same one a run with that value keeps); of `train:` everything but where
# and how often training reports, and the method (its rows were checked for the configured one).
NOT_SEARCHABLE = {
    "train.method": "the data were checked for the configured method; tune one method per study",
    "train.device": "every trial runs on the same device",
    "train.precision": "every trial runs in the same precision",
    "train.log_every": "it does not change the model",
    "train.checkpoints": "it does not change the model",
    "train.early_stopping": "trials are evaluated and pruned by the study itself",
}


class SearchParam(BaseModel):
    """One searched config value, written `{log_uniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{int: [lo, hi]}` or
    `{choice: [a, b, ...]}`; the same shape is written back to `config.resolved.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SearchKind
    values: list[Any]

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, raw: Any) -> Any:
        kinds = get_args(SearchKind)
        if isinstance(raw, SearchParam):
            return raw
        if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in kinds:
            kind, values = next(iter(raw.items()))
            if kind in ("log_uniform", "uniform") and isinstance(values, list):
                # YAML 1.1 reads 1e-5 (no dot) as a string; the range is meant as numbers.
                values = [_float_or_text(v) for v in values]
            return {"kind": kind, "values": values}
        raise PydanticCustomError(
            "search_param",
            "a distribution is one of {log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} or "
            "{choice: [a, b, ...]}",
        )

    @model_validator(mode="after")
    def _valid_range(self) -> SearchParam:
        v = self.values
        if self.kind == "choice":
            if not v or not all(x is None or isinstance(x, bool | int | float | str) for x in v):
                raise PydanticCustomError(
                    "search_param", "choice needs a non-empty list of numbers, strings, booleans or null"
                )
            return self
        numbers = len(v) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        if not numbers or (self.kind == "int" and not all(isinstance(x, int) for x in v)):
            what = "integers" if self.kind == "int" else "numbers"
            raise PydanticCustomError("search_param", f"{self.kind} needs two {what} [lo, hi]")
        if v[0] >= v[1]:
            raise PydanticCustomError("search_param", f"{self.kind} needs lo < hi")
        if self.kind == "log_uniform" and v[0] <= 0:
            raise PydanticCustomError(
                "search_param", "log_uniform needs lo > 0; use uniform for a range from 0"
            )
        return self

    @model_serializer
    def _as_written(self) -> dict[str, list[Any]]:
        return {self.kind: self.values}


class DriftConfig(_Section):
    """When `specialize monitor` calls the inputs drifted from the training data (tests in monitor/drift.py).

    Each test flags when its p-value is below `alpha` and its effect is at least its threshold: the p-value says
    the shift is not sampling noise, the threshold that it is large enough to act on.
    """

    alpha: float = Field(0.01, gt=0, lt=0.5, description="Significance level of each drift test.")
    min_requests: int = Field(50, ge=10, description="Fewer logged prompts than this: drift is not judged.")
    token_divergence: float = Field(
        0.02, gt=0, le=1, description="Excess Jensen-Shannon divergence of token distributions, in bits."
    )
    length_shift: float = Field(
        0.2, gt=0, le=1, description="Kolmogorov-Smirnov distance of prompt lengths in tokens."
    )
    far_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of prompts far from every training example, above the calibrated `far_quantile`.",
    )
    far_quantile: float = Field(
        0.05, gt=0, lt=0.5, description="Held-out prompts less similar than this quantile count as far."
    )
    label_shift: float = Field(
        0.15, gt=0, le=1, description="Total variation distance of answered labels vs training labels."
    )


class QualityConfig(_Section):
    """When feedback and errors count as a quality drop."""

    max_negative_share: float = Field(
        0.25, gt=0, le=1, description="Share of rated or corrected answers that were bad."
    )
    max_error_rate: float = Field(0.05, gt=0, le=1, description="Share of requests answered with an error.")
    min_feedback: int = Field(20, ge=1, description="Fewer rated or corrected answers: quality not judged.")


class GateConfig(_Section):
    """What a retrained child must show before it replaces its parent (monitor/promotion.py)."""

    margin: float = Field(
        0.02, ge=0, lt=1, description="Largest drop of the headline metric on the regression set allowed."
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Level of the one-sided paired bootstrap tests.")
    max_examples: int | None = Field(
        None, gt=0, description="Regression set: a seeded sample of this many (frozen once)."
    )
    min_new_examples: int = Field(10, ge=1, description="Fewer held-out new examples: the child is refused.")


class RetrainConfig(_Section):
    """What the next dataset is made of (`specialize retrain`, `specialize loop`)."""

    feedback: bool = Field(True, description="Learn from corrections and ratings of served answers.")
    data: list[Path] = Field(default_factory=list, description="New data files, read as `data:` reads.")
    golden: Path | None = Field(None, description="Examples added to the frozen regression set.")
    holdout: float = Field(
        0.3, gt=0, lt=1, description="Share of new examples held out to test parent and child on."
    )
    min_new_examples: int = Field(
        40,
        ge=1,
        description="The loop retrains once this many new examples came in (40 x holdout 0.3 = 12 to test on).",
    )


class MonitorConfig(_Section):
    """Monitoring of the served model and its continuous fine-tuning (`specialize monitor`, `loop`)."""

    alias: str = Field(
        "production", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Alias the loop watches."
    )
    since: str = Field("7d", description="Window of traffic looked at: 7d, 12h, 30m, 2w or an ISO date.")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @field_validator("since")
    @classmethod
    def _window(cls, since: str) -> str:
        window_start(since)
        return since


_WINDOW_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def window_start(since: str, now: datetime | None = None) -> datetime:
    """The UTC time (naive, as the registry stores times) a window `since` begins: `7d`, `12h`, `30m`, `2w` back
    from `now`, or an ISO date or time.

    Raises:
        ValueError: neither form; the message names both.
    """
    text = since.strip()
    if len(text) > 1 and text[-1] in _WINDOW_UNITS and text[:-1].isdigit():
        start = (now or datetime.now(UTC).replace(tzinfo=None)) - timedelta(
            **{_WINDOW_UNITS[text[-1]]: int(text[:-1])}
        )
        return start
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{since!r} is not a window: give a number and a unit (30m, 12h, 7d, 2w) or an ISO date (2025-01-31)"
        ) from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class RunConfig(_Section):
    """Everything one run needs; each stage receives only its own section."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str = DEFAULT_BASE_MODEL
    seed: int = 0
    runs_dir: Path = Path("runs")
    registry: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<runs_dir>/registry.db")
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    reward: RewardConfig | None = Field(
        None,
        description="Scores answers: what online_dpo and grpo learn from, and a metric of every evaluated system.",
    )
    search: dict[str, SearchParam] | None = Field(
        None,
        description="`specialize tune`: dotted config key -> distribution, e.g. train.learning_rate: "
        "{log_uniform: [1e-5, 3e-3]}; absent: a default space (search/space.py).",
    )

    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _on_policy_needs_a_reward(self) -> RunConfig:
        if self.train.method in ON_POLICY and self.reward is None:
            raise PydanticCustomError(
                RULE,
                "train.method {method} learns from rewards of the model's own answers, and there is no reward: "
                "section; add one, e.g. reward: {{type: number}} for GSM8K-style answers (types: {types})",
                {"method": self.train.method, "types": ", ".join(REWARD_TYPES)},
            )
        return self

    @model_validator(mode="after")
    def _search_keys_exist(self) -> RunConfig:
        """Every searched key names a value `specialize tune` may vary, and every candidate value is valid there."""
        problems = []
        base = self.model_dump(mode="json", exclude={"search"})
        for key, param in (self.search or {}).items():
            problem = _search_key_problem(key)
            if problem is None:
                for value in param.values:  # the choices, or both ends of a range
                    problem = _search_value_problem(base, key, value)
                    if problem is not None:
                        break
            if problem is not None:
                problems.append(f"search.{key}: {problem}")
        if problems:
            raise PydanticCustomError("search", "\n".join(problems))
        return self

    @model_validator(mode="after")
    def _few_shot_needs_examples(self) -> RunConfig:
        if self.data.max_train_examples is not None and self.data.max_train_examples < self.eval.few_shot_k:
            raise PydanticCustomError(
                RULE,
                "data.max_train_examples ({n}) is below eval.few_shot_k ({k}); few-shot prompts need that many "
                "training examples: raise data.max_train_examples or lower eval.few_shot_k",
                {"n": self.data.max_train_examples, "k": self.eval.few_shot_k},
            )
        return self

    @property
    def registry_url(self) -> str:
        return self.registry or f"sqlite:///{(self.runs_dir / 'registry.db').as_posix()}"


def _float_or_text(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _search_key_problem(key: str) -> str | None:
    """Why `key` cannot be searched (with the fix), or None."""
    parts = key.split(".")
    for prefix, why in NOT_SEARCHABLE.items():
        if key == prefix or key.startswith(prefix + "."):
            return f"cannot be searched: {why}; remove it from search:"
    if parts[0] == "data" and key != "data.max_train_examples":
        return (
            "cannot be searched: the data are prepared once per study; of data: only data.max_train_examples "
            "can vary (set the others outside search:)"
        )
    if parts[0] != "train" and parts[0] != "data":
        return "cannot be searched: only train.* keys and data.max_train_examples vary between trials"
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            close = difflib.get_close_matches(part, list(model.model_fields), n=1)
            hint = f" (did you mean '{'.'.join([*parts[:i], close[0]])}'?)" if close else ""
            return f"unknown config key{hint}; search: keys are dotted paths such as train.learning_rate"
        nested = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)]
        sections = [a for a in nested if issubclass(a, BaseModel)]
        if i < len(parts) - 1:
            if not sections:
                return f"{'.'.join(parts[: i + 1])} is a value, not a section"
            model = sections[0]
        elif sections:
            return f"{key} is a section; search one of its values, e.g. {key}.{next(iter(sections[0].model_fields))}"
    return None


def _search_value_problem(base: dict[str, Any], key: str, value: Any) -> str | None:
    """Why the config with `key` set to `value` is invalid (the field's own rule), or None."""
    import copy

    doc = copy.deepcopy(base)
    node = doc
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    try:
        RunConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"{value!r} is not a valid value here ({err['msg']}); change the distribution's values"
    return None


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML, apply `key=value` overrides and validate it.

    Args:
        path: the YAML file; None starts from an empty config (then `data.train` must come from an override).
        overrides: dotted assignments such as `train.learning_rate=1e-4`; values are parsed as YAML scalars.

    Returns:
        The validated config, with relative data paths made relative to the config file's folder and
        `runs_dir` relative to the current directory.

    Raises:
        ConfigError: naming the file, every bad key and the fix, all at once.
    """
    source = str(path) if path is not None else "--set"
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(
                f"config file {path} is a folder; pass the path of a run YAML file (`specialize data check "
                f"{path}` checks a folder of data files)"
            )
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass the path of a run YAML file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys (name:, data:, train:, ...)")
        raw = loaded
        base_dir = path.resolve().parent
        if "name" not in raw:
            raw["name"] = path.stem
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    config.runs_dir = config.runs_dir.expanduser().resolve()
    # A path typed on the command line is relative to where it was typed; one in the file, to the file.
    typed = {item.partition("=")[0].strip() for item in overrides or []}
    data = config.data
    data.train = _relative_to(data.train, Path.cwd() if "data.train" in typed else base_dir)
    if data.validation is not None:
        data.validation = _relative_to(
            data.validation, Path.cwd() if "data.validation" in typed else base_dir
        )
    retrain = config.monitor.retrain
    retrain.data = [
        _relative_to(p, Path.cwd() if "monitor.retrain.data" in typed else base_dir) for p in retrain.data
    ]
    if retrain.golden is not None:
        retrain.golden = _relative_to(
            retrain.golden, Path.cwd() if "monitor.retrain.golden" in typed else base_dir
        )
    for key, found, problem, fix in (
        (
            "exclude_examples",
            Path.is_file,
            "does not exist",
            "give a JSONL of prepared examples (e.g. a study's search/objective_sample.jsonl), or remove the key",
        ),
        (
            "rag_documents",
            Path.is_dir,
            "is not a folder",
            "give a folder of .txt or .md documents, or remove the key to retrieve training examples",
        ),
    ):
        given: Path | None = getattr(config.eval, key)
        if given is None:
            continue
        resolved = _relative_to(given, Path.cwd() if f"eval.{key}" in typed else base_dir)
        setattr(config.eval, key, resolved)
        if not found(resolved):
            raise ConfigError(f"{source}: eval.{key}: {resolved} {problem}; {fix}")
    return config


def _relative_to(path: Path, base_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base_dir / path


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example --set train.learning_rate=1e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
        node = child
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    # `a: b` or `# x` would parse as a mapping or a comment; a value given on the command line is a scalar or
    # an explicit [list], otherwise it is the text as typed.
    if isinstance(parsed, dict) or (parsed is None and value.strip() not in ("", "null", "~")):
        parsed = value
    node[parts[-1]] = parsed


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'{_suggest(err['loc'])}; remove or rename it")
        elif err["type"] == RULE:  # a rule across keys: its message names them
            lines.append(f"{source}: {err['msg']}")
        elif err["type"] == "search":
            lines += [f"{source}: {line}" for line in err["msg"].splitlines()]
        elif err["type"] == "search_param":
            lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r}); fix it in search:")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'; add it to the config or pass --set {key}=...")
        else:
            got = err.get("input")
            lines.append(
                f"{source}: {key}: {err['msg']} (got {got!r}); fix it in the config or pass --set {key}=..."
            )
    return "\n".join(lines)


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_resolved(path: Path) -> RunConfig:
    """Read back a run's `config.resolved.yaml` (paths in it are already absolute)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.pop("_provenance", None)
    # Runs of the server's fine-tuning jobs once recorded their job here; the server's job store holds it now.
    doc.pop("fine_tuning_job", None)
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from None


def save_resolved(config: RunConfig, path: Path) -> None:
    """Write every config value, defaults included, plus versions and git revision, atomically."""
    doc: dict[str, Any] = config.model_dump(mode="json")
    doc["_provenance"] = {"packages": _versions(), "git_revision": _git_revision()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("specialize", "torch", "transformers", "peft", "python"):
        if name == "python":
            import platform

            out[name] = platform.python_version()
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
