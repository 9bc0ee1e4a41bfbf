"""Exact and near-duplicate detection.

Exact duplicates compare text normalised for Unicode form, case and whitespace. Near duplicates compare sets of
word 3-grams ("shingles") by Jaccard similarity, found with MinHash and locality-sensitive hashing (Broder 1997;
Leskovec et al., Mining of Massive Datasets, ch. 3): 128 hash permutations in 16 bands of 8 rows make any pair
above a similarity of about 0.7 share a band with high probability (0.99 at 0.85), so only those pairs are
compared, and every candidate is then confirmed on its exact Jaccard similarity: a near-duplicate verdict never
rests on the estimate alone. It is under 200 lines of numpy, exact and deterministic; datasketch would add a
dependency for the same few lines and still need the confirmation step.

Shingles shared by a large share of the rows (boilerplate) count for nothing when two rows both have them: a
task instruction repeated on every row (77 label names in banking77) would otherwise make every pair of rows look
alike. The boilerplate a row lacks still counts as a difference (see `similarity`).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

NUM_PERM = 128
BANDS = 16
SHINGLE = 3
PRIME = (1 << 31) - 1  # a, b < PRIME and 32-bit shingle hashes: a * h + b stays below 2**63, no overflow
BOILERPLATE_SHARE = 0.2
BOILERPLATE_MIN_ROWS = 5
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Text as duplicate detection sees it: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingles(text: str) -> set[int]:
    """Hashes of the word 3-grams of `text` (the whole text when it has fewer words)."""
    words = _WORD.findall(normalise(text))
    if len(words) < SHINGLE:
        return {zlib.crc32(" ".join(words).encode())} if words else set()
    return {zlib.crc32(" ".join(words[i : i + SHINGLE]).encode()) for i in range(len(words) - SHINGLE + 1)}


def boilerplate(sets: list[set[int]]) -> set[int]:
    """Shingles that a large share of the rows have (instructions, templates, label lists)."""
    counts = Counter(h for s in sets for h in s)
    limit = max(BOILERPLATE_MIN_ROWS, BOILERPLATE_SHARE * len(sets))
    return {h for h, n in counts.items() if n >= limit}


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def similarity(a: set[int], b: set[int], common: set[int]) -> float:
    """Jaccard similarity in which boilerplate both rows share counts for nothing.

    Shared boilerplate leaves both the intersection and the union, so a long common instruction cannot make two
    rows alike; boilerplate only one row has still counts as a difference, so dropping it cannot make two rows
    alike either ("she wrote note 1" and "he wrote note 1" stay apart when "she wrote note" is common).
    """
    both = a & b
    shared_common = len(both & common)
    union = len(a | b) - shared_common
    return (len(both) - shared_common) / union if union else 0.0


def signatures(sets: list[set[int]], seed: int = 1) -> np.ndarray:
    """MinHash signatures, one row of NUM_PERM values per set (empty sets get the maximum everywhere)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, NUM_PERM, dtype=np.uint64)
    b = rng.integers(0, PRIME, NUM_PERM, dtype=np.uint64)
    out = np.full((len(sets), NUM_PERM), PRIME, dtype=np.uint64)
    # Chunks of rows keep the (shingles x permutations) matrix near 64 MB whatever the corpus size.
    start = 0
    while start < len(sets):
        end, total = start, 0
        while end < len(sets) and (total == 0 or total + len(sets[end]) <= 65536):
            total += len(sets[end])
            end += 1
        chunk = [np.fromiter(sets[i], dtype=np.uint64, count=len(sets[i])) for i in range(start, end)]
        sizes = np.array([len(c) for c in chunk])
        filled = np.flatnonzero(sizes)
        if filled.size:
            hashes = np.concatenate([chunk[i] for i in filled])
            values = (hashes[:, None] * a[None, :] + b[None, :]) % PRIME
            offsets = np.concatenate([[0], np.cumsum(sizes[filled])[:-1]])
            out[start + filled] = np.minimum.reduceat(values, offsets, axis=0)
        start = end
    return out


@dataclass(frozen=True)
class Match:
    """Row `index` nearly repeats the earlier row `of`, with this Jaccard similarity."""

    index: int
    of: int
    similarity: float


def near_duplicates(
    sets: list[set[int]], threshold: float, labels: list[str | None] | None = None
) -> list[Match]:
    """Rows that nearly repeat an earlier kept row, in one pass in order.

    Args:
        sets: shingle sets in priority order: a row is matched only against rows before it that were themselves
            kept, so the first of a cluster stays.
        threshold: `similarity` at or above which two rows are near duplicates.
        labels: per row, its label; rows with different labels are never duplicates (they are a conflict, which
            the audit reports instead).

    Returns:
        One match per removed row, naming the most similar earlier kept row.
    """
    common = boilerplate(sets)
    # Candidates come from the sets without boilerplate: `similarity` never exceeds their Jaccard similarity, so
    # no pair above the threshold is lost by looking there.
    reduced = [s - common for s in sets] if common else sets
    rows_per_band = NUM_PERM // BANDS
    sigs = signatures(reduced)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
    matches = []
    for i, s in enumerate(sets):
        if not reduced[i]:
            continue  # nothing but boilerplate: exact deduplication is all that can judge it
        keys = [sigs[i, band * rows_per_band : (band + 1) * rows_per_band].tobytes() for band in range(BANDS)]
        candidates = {
            j
            for band, key in enumerate(keys)
            for j in buckets[band].get(key, ())
            if labels is None or labels[j] == labels[i]
        }
        best = max(((similarity(s, sets[j], common), -j) for j in candidates), default=(0.0, 0))
        if best[0] >= threshold:
            matches.append(Match(i, -best[1], best[0]))
            continue
        for band, key in enumerate(keys):
            buckets[band].setdefault(key, []).append(i)
    return matches
