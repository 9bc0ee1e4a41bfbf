"""Data preparation: load, validate, scrub, clean, split, template, audit.

Reads the files named in the `data:` section (chat JSONL, ShareGPT, Alpaca, prompt/completion, preference pairs,
plain text; as JSONL, JSON, CSV/TSV or Parquet), writes `data/train.jsonl`, `data/validation.jsonl`,
`data/rejects.jsonl` (every row removed, with its reason: nothing is dropped silently) and `data/audit.json` into
the run directory. Run as the first stage of `specialize run`, alone with `specialize data prepare`, or as a
read-only check with `specialize data check`.

Modules: rows (files -> rows), formats (rows -> conversations), load (examples and their problems), pii, dedupe,
tokens, split, template, clean (the cleaning steps, in order), audit, prepare (the stage itself). Runs are created
by `pipeline.py`, not here.
"""

from __future__ import annotations

from specialize.data.load import Example, read_chat_jsonl, read_data, read_examples
from specialize.data.prepare import (
    DataCheck,
    PreparedData,
    check_data,
    load_examples,
    prepare_data,
    read_prepared,
)
from specialize.data.split import group_split, seeded_sample, stratified_split
from specialize.data.template import encode_conversation, encode_text, render_prompt, with_system

__all__ = [
    "DataCheck",
    "Example",
    "PreparedData",
    "check_data",
    "encode_conversation",
    "encode_text",
    "group_split",
    "load_examples",
    "prepare_data",
    "read_chat_jsonl",
    "read_data",
    "read_examples",
    "read_prepared",
    "render_prompt",
    "with_system",
    "seeded_sample",
    "stratified_split",
]
