"""Training data for one rule: examples with complete oracle labels, split by package, balanced, ready for
TRL (``loralint train``) and LlamaFactory.

Every file of every package is parsed once and labelled by the rule's tree-sitter oracle. Four kinds of
example are cut from it, all in the rule's one prompt/answer format (lines numbered as in the file, answer
``LINE: KIND: CONDITION`` a line in source order, or ``No violations found.``):

- ``window``: the file cut into ~30-line windows by :func:`loralint.windows.file_windows`, the scanner's unit;
- ``file``: the whole file, or, when it does not fit the training length, chunks of it cut between statements;
- ``snippet``: each violation with three lines around it;
- ``clean``: up to three conditions with a single predicate per file, three lines around each, when no
  violation lies in that region.

Labels are complete: an example's answer lists every finding whose condition lies inside its lines, and a
region that would cut a condition in two is widened until it does not (``clean`` regions are dropped
instead). Every example is measured in tokens with the real tokenizer of the chosen base, chat template
included; one longer than the cutoff is never written (a long file is chunked instead). Packages go to one
split only (``train``, ``val`` carved from train by package, ``eval`` from the held-out list); duplicates are
removed within and across splits; violation and clean examples are balanced 50/50 with a seed.

Output, in one folder: ``train.jsonl`` (``val.jsonl``, ``eval.jsonl``), ChatML rows
``{"messages": [user, assistant], "meta": {...}}``; ``dataset_info.json`` for LlamaFactory; LlamaFactory QLoRA
recipes for Qwen3-0.6B and Qwen3-1.7B with the seed tutorial's hyperparameters; ``stats.json``.

Speed: files are parsed, labelled, rendered and measured in worker processes (all cores); token counts come
from a token kit made once per base and rule (:mod:`.tokens`).

Modules, one concern each: :mod:`.packages` (inputs, splits, :class:`DatasetError`), :mod:`.tokens` (token
counts), :mod:`.examples` (one file's examples), :mod:`.builder` (the build, dedup, balance, stats),
:mod:`.llamafactory` (``dataset_info.json`` and recipes). Callers import from ``loralint.dataset``.
"""

from __future__ import annotations

from ..corpus import Package
from .builder import DEDUP_MODES, DEFAULT_BASE, BuildResult, build, summary
from .examples import CLEAN_PER_FILE, CONTEXT, DEFAULT_CUTOFF, DEFAULT_MAX_BYTES, KINDS, SYNTAX_ERRORS, Example, Options
from .llamafactory import dataset_names, recipe_template, write_dataset_info, write_recipes
from .packages import SPLITS, DatasetError, carve_val, check_splits, held_out_names, resolve_packages, shipped_list
from .tokens import TokenCounter, TokenKit, token_kit

__all__ = ["CLEAN_PER_FILE", "CONTEXT", "DEDUP_MODES", "DEFAULT_BASE", "DEFAULT_CUTOFF", "DEFAULT_MAX_BYTES", "KINDS",
           "SPLITS", "SYNTAX_ERRORS", "BuildResult", "DatasetError", "Example", "Options", "Package", "TokenCounter",
           "TokenKit", "build", "carve_val", "check_splits", "dataset_names", "held_out_names", "recipe_template",
           "resolve_packages", "shipped_list", "summary", "token_kit", "write_dataset_info", "write_recipes"]
