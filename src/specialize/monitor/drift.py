"""Input drift: the prompts a model was served against the data its run was trained on.

Each test gives an effect (how large the shift is, in units a person can read) and a p-value (how likely an
effect that large is from sampling alone, with no drift); it flags when the p-value is below `drift.alpha` AND the
effect reaches its threshold. The p-value alone would flag a trivial shift once a week holds enough requests; the
effect alone would flag noise when it holds few. At the default alpha of 0.01, the chance that any of the four
tests flags a window with no drift is at most 4% (Bonferroni).

The task template is taken off first. Prepared prompts often share an instruction (banking77's 77-label list is
~400 tokens of each ~420-token prompt); left in, it would drown any change in the part users write. The longest
prefix and suffix shared by 90% of the training prompts (cut back to a word boundary) are removed from every
prompt that carries them; a served prompt that does not carry them is kept whole, so a changed template shows as
drift.

1. Token distribution (`token_divergence`): the Jensen-Shannon divergence, in bits, between the token frequencies
   (the run's tokenizer) of the served prompts and of the training prompts. A divergence between two finite
   samples is biased upwards, the more so the smaller and sparser they are, so neither a fixed cut-off nor a
   textbook null distribution fits it. The test is a permutation test: the two samples are pooled and split at
   random (500 times) with their sizes kept; the p-value is the share of splits at least as divergent, the
   effect the observed divergence minus the mean of the splits (the part sampling does not explain). Default
   threshold 0.02 bits: the excess divergence of traffic in which about 4% of the tokens come from a vocabulary
   the training data never uses (for a share f of disjoint tokens the divergence is close to f/2 bits).
2. Length shift (`length_shift`): the two-sample Kolmogorov-Smirnov test on prompt lengths in tokens; the effect is
   the KS distance D, the largest gap between the two length distributions. Default 0.2: a fifth of the requests
   sit on the other side of some length than the training data puts them, enough to move the cost per request
   and to reach lengths the model was not trained on.
3. Far from every training example (`far_share`): each prompt's cosine similarity (TF-IDF of words and word pairs,
   English stop words left out: with them, a financial-news sentence looked as close to banking77's queries as
   another banking query, through "the", "my" and "to") to its nearest training prompt. What "far" means is calibrated on held-out prompts of the same distribution
   (the validation split, plus each of up to 1,000 training prompts against the others): "far" is below their
   `far_quantile` (5%), so with no drift about 5% of requests are far by construction. The test is a one-sided
   binomial test of the far share against the calibrated share; the effect is the excess. Default 0.1: ten more
   requests in a hundred that look like nothing the model was trained on.
4. Classification only (`label_shift`): the labels the model answered against the training labels. Answers that
   name no label are not a label: their share is reported beside the test (it is answer quality, and counting it
   as a category would flag any model that rambles, drift or not). The effect is the total variation distance
   (the share of answers that would have to change label to match) minus its mean under sampling from the
   training distribution, a bias that is large for many labels (about 0.15 for 500 answers over 77 labels); the
   p-value is a Monte Carlo multinomial test (2,000 draws), which needs no minimum count per label as the
   chi-square test does. The model's own confusions add to the distance even without drift, which is why the
   default threshold, 0.15, sits above what a model that deserves serving shows on held-out data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from specialize.config import DriftConfig

PERMUTATIONS = 500
LABEL_DRAWS = 2000
REFERENCE_CAP = 3000  # training prompts taken as the reference (a seeded sample beyond this)
CALIBRATION_CAP = 1000
TEMPLATE_SHARE = 0.9


@dataclass(frozen=True)
class DriftTest:
    """One test's outcome; `effect` is compared with `threshold`, `p_value` with alpha."""

    name: str
    effect: float
    threshold: float
    p_value: float
    flagged: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Template:
    """The instruction every training prompt shares: a prefix and a suffix."""

    prefix: str = ""
    suffix: str = ""

    def cut(self, prompt: str) -> str:
        """The part of `prompt` a user wrote, if it carries the template; otherwise all of it."""
        body = prompt
        if self.prefix and body.startswith(self.prefix):
            body = body[len(self.prefix) :]
        if self.suffix and body.endswith(self.suffix):
            body = body[: len(body) - len(self.suffix)]
        return body


def find_template(prompts: list[str]) -> Template:
    """The longest prefix and suffix shared by `TEMPLATE_SHARE` of `prompts`, cut back to a word boundary."""
    if len(prompts) < 2:
        return Template()
    prefix = _shared_start(prompts)
    suffix = _shared_start([p[::-1] for p in prompts])[::-1]
    # never cut inside a word: the varying part then starts with whole words
    cut = max(prefix.rfind(" "), prefix.rfind("\n"))
    prefix = prefix[: cut + 1] if cut >= 0 else ""
    cut = min((i for i in (suffix.find(" "), suffix.find("\n")) if i >= 0), default=-1)
    suffix = suffix[cut:] if cut >= 0 else ""
    return Template(prefix, suffix)


def _shared_start(texts: list[str]) -> str:
    # In sorted order, texts sharing a start are neighbours: the longest start shared by k texts is the common
    # prefix of some k consecutive ones.
    ordered = sorted(texts)
    k = max(2, math.ceil(TEMPLATE_SHARE * len(ordered)))
    best = ""
    for i in range(len(ordered) - k + 1):
        first, last = ordered[i], ordered[i + k - 1]
        low, high = len(best), min(len(first), len(last))
        if first[:low] != last[:low]:
            continue
        while low < high:  # binary search on slice equality: compared in C, not character by character
            mid = (low + high + 1) // 2
            low, high = (mid, high) if first[:mid] == last[:mid] else (low, mid - 1)
        if low > len(best):
            best = first[:low]
    return best


def token_divergence(
    config: DriftConfig, traffic: list[list[int]], reference: list[list[int]], seed: int, decode: Any = None
) -> DriftTest:
    """Test 1: permutation test of the Jensen-Shannon divergence of token frequencies."""
    from scipy import sparse

    docs = traffic + reference
    vocabulary, columns = np.unique(
        np.fromiter((t for d in docs for t in d), dtype=np.int64), return_inverse=True
    )
    rows = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    counts = sparse.csr_matrix(
        (np.ones(len(columns)), (rows, columns)), shape=(len(docs), max(len(vocabulary), 1))
    )
    total = np.asarray(counts.sum(0)).ravel()
    n = len(traffic)
    in_traffic = np.zeros((len(docs), 1))
    in_traffic[:n] = 1
    served = np.asarray(counts.T @ in_traffic)
    observed = float(_jsd_bits(served, total[:, None] - served)[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, PERMUTATIONS, 100):
        draws = min(100, PERMUTATIONS - start)
        chosen = np.zeros((len(docs), draws))
        for j in range(draws):
            chosen[rng.permutation(len(docs))[:n], j] = 1
        split = np.asarray(counts.T @ chosen)
        null.append(_jsd_bits(split, total[:, None] - split))
    null_jsd = np.concatenate(null)
    effect = observed - float(null_jsd.mean())
    p_value = float((1 + (null_jsd >= observed).sum()) / (1 + len(null_jsd)))
    details: dict[str, Any] = {
        "divergence_bits": observed,
        "null_mean_bits": float(null_jsd.mean()),
        "permutations": PERMUTATIONS,
        "served_tokens": int(served.sum()),
        "reference_tokens": int(total.sum() - served.sum()),
    }
    if decode is not None and served.sum() > 0:
        p = served[:, 0] / served.sum()
        q = (total - served[:, 0]) / max(total.sum() - served.sum(), 1)
        excess = p - q
        details["over_represented"] = [
            {"token": decode(int(vocabulary[i])), "served": float(p[i]), "training": float(q[i])}
            for i in np.argsort(-excess)[:10]
            if excess[i] > 0
        ]
    return _test("token_divergence", effect, config.token_divergence, p_value, config.alpha, details)


def _jsd_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between the count columns of `a` and `b`."""
    p = a / np.maximum(a.sum(0, keepdims=True), 1)
    q = b / np.maximum(b.sum(0, keepdims=True), 1)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(0)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(0)
    result: np.ndarray = 0.5 * kl_p + 0.5 * kl_q
    return result


def length_shift(config: DriftConfig, traffic: list[int], reference: list[int]) -> DriftTest:
    """Test 2: Kolmogorov-Smirnov test of prompt lengths in tokens."""
    from scipy.stats import ks_2samp

    result = ks_2samp(traffic, reference)
    details = {
        "served": _length_summary(traffic),
        "training": _length_summary(reference),
    }
    return _test(
        "length_shift",
        float(result.statistic),
        config.length_shift,
        float(result.pvalue),
        config.alpha,
        details,
    )


def _length_summary(lengths: list[int]) -> dict[str, float]:
    values = np.asarray(lengths, dtype=float)
    return {
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "mean": float(values.mean()),
    }


def far_share(
    config: DriftConfig,
    traffic: list[str],
    training: list[str],
    held_out: list[str],
    seed: int,
) -> DriftTest:
    """Test 3: the share of prompts less similar to every training prompt than held-out prompts nearly ever are."""
    from scipy.stats import binomtest
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
    reference = vectorizer.fit_transform(training)
    calibration = list(_nearest(vectorizer.transform(held_out), reference)) if held_out else []
    rng = np.random.default_rng(seed)
    own = rng.permutation(len(training))[:CALIBRATION_CAP]
    calibration += list(_nearest(reference[own], reference, exclude=own))
    cal = np.asarray(calibration)
    cut = float(np.quantile(cal, config.far_quantile))
    expected = float(max((cal < cut).mean(), 1 / len(cal)))
    similarity = _nearest(vectorizer.transform(traffic), reference)
    far = similarity < cut
    share = float(far.mean())
    p_value = float(binomtest(int(far.sum()), len(traffic), expected, alternative="greater").pvalue)
    farthest = np.argsort(similarity)[:5]
    details = {
        "far_share": share,
        "expected_share": expected,
        "similarity_cut": cut,
        "calibration_prompts": len(cal),
        "median_similarity": {"served": float(np.median(similarity)), "held_out": float(np.median(cal))},
        "farthest": [{"prompt": traffic[i][:200], "similarity": float(similarity[i])} for i in farthest],
    }
    return _test("far_share", share - expected, config.far_share, p_value, config.alpha, details)


def _nearest(queries: Any, reference: Any, exclude: np.ndarray | None = None) -> np.ndarray:
    """Each query's cosine similarity to its nearest reference row (TF-IDF rows are unit length); `exclude[i]` is
    a reference row query i may not match (itself)."""
    out = []
    for start in range(0, queries.shape[0], 256):
        sims = (queries[start : start + 256] @ reference.T).toarray()
        if exclude is not None:
            part = exclude[start : start + 256]
            sims[np.arange(len(part)), part] = -1.0
        out.append(sims.max(1) if sims.shape[1] else np.zeros(sims.shape[0]))
    return np.concatenate(out) if out else np.zeros(0)


def label_shift(
    config: DriftConfig, answers: list[str], training_labels: list[str], seed: int
) -> DriftTest | None:
    """Test 4: the labels answered against the training labels (Monte Carlo multinomial test of the TVD).

    Only answers that name a label count (any capitalisation, a final full stop allowed); the share that names
    none is reported beside it. None when fewer than `drift.min_requests` answers name a label.
    """
    labels = sorted(set(training_labels))
    by_text = {label.strip().lower(): label for label in labels}
    named = [by_text.get(a.strip().strip(".").strip().lower()) for a in answers]
    answered = [label for label in named if label is not None]
    if len(answered) < config.min_requests:
        return None
    train_counts = Counter(training_labels)
    expected = np.array([train_counts[c] for c in labels], dtype=float)
    expected /= expected.sum()
    seen = Counter(answered)
    observed = np.array([seen[c] for c in labels], dtype=float) / len(answered)
    tvd = 0.5 * float(np.abs(observed - expected).sum())
    draws = np.random.default_rng(seed).multinomial(len(answered), expected, size=LABEL_DRAWS) / len(answered)
    null = 0.5 * np.abs(draws - expected).sum(1)
    p_value = float((1 + (null >= tvd).sum()) / (1 + LABEL_DRAWS))
    order = np.argsort(-np.abs(observed - expected), kind="stable")
    details = {
        "total_variation": tvd,
        "null_mean": float(null.mean()),
        "answers": len(answers),
        "answers_naming_a_label": len(answered),
        "no_label_share": 1 - len(answered) / len(answers),
        "largest_changes": [
            {"label": labels[i], "served": float(observed[i]), "training": float(expected[i])}
            for i in order[:10]
        ],
    }
    return _test("label_shift", tvd - float(null.mean()), config.label_shift, p_value, config.alpha, details)


def _test(
    name: str, effect: float, threshold: float, p_value: float, alpha: float, details: dict[str, Any]
) -> DriftTest:
    return DriftTest(name, effect, threshold, p_value, p_value < alpha and effect >= threshold, details)
