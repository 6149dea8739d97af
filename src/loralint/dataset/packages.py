"""The packages a dataset is built from: the shipped lists, list files, package folders; the validation split
carved from train by package; the checks that no package is in two splits and no held-out package is trained on.
A package is :class:`loralint.corpus.Package` (the corpus's own record), located in its folder."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Iterable

from ..corpus import Package, read_list

SPLITS = ("train", "val", "eval")


class DatasetError(ValueError):
    """A problem with a dataset, its inputs or its files (building or training); the message says what to do."""


def shipped_list(name: str) -> Path:
    """The list file shipped with loralint for ``train`` / ``eval``."""
    return Path(str(resources.files("loralint") / "data" / "corpus" / f"{name}.txt"))


def resolve_packages(values: Iterable[str | os.PathLike], corpus_dir: str | os.PathLike) -> list[Package]:
    """Packages from what the user gave: ``train`` / ``eval`` (the shipped lists), list files (``name@version``
    a line, packages unpacked in ``corpus_dir`` by ``loralint corpus fetch``) or package folders. Values may be
    comma-separated."""
    out: list[Package] = []
    for value in values:
        for item in (str(value).split(",") if not Path(value).exists() else [str(value)]):
            item = item.strip()
            if not item:
                continue
            p = Path(item)
            if p.is_dir():
                out.append(Package.at(p))
                continue
            if p.is_file():
                lst = p
            elif item in ("train", "eval"):
                lst = shipped_list(item)
            else:
                raise DatasetError(f"{item!r} is neither a folder, a list file nor `train` / `eval`")
            try:
                pkgs = read_list(lst)
            except ValueError as e:
                raise DatasetError(str(e)) from None
            missing = [pk.spec for pk in pkgs if not (Path(corpus_dir) / pk.folder).is_dir()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} package(s) of {item} are not in {corpus_dir} ({', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}): run `loralint corpus fetch {item} --dest {corpus_dir}`")
            out.extend(replace(pk, root=Path(corpus_dir) / pk.folder) for pk in pkgs)
    seen: dict[str, Package] = {}
    for pk in out:
        if pk.label in seen and seen[pk.label].root.resolve() != pk.root.resolve():
            raise DatasetError(f"two different packages are both named {pk.label!r}: "
                               f"{seen[pk.label].root} and {pk.root}")
        seen.setdefault(pk.label, pk)
    return list(seen.values())


def held_out_names() -> set[str]:
    """Names of the packages on the shipped eval list (never in a train split, whatever their version)."""
    return {p.name for p in read_list(shipped_list("eval"))}


def carve_val(train: list[Package], spec: str | int | None, seed: int) -> tuple[list[Package], list[Package]]:
    """Move packages from train to a validation split: ``N`` packages drawn with ``seed``, or named ones."""
    if spec in (None, "", 0, "0"):
        return train, []
    if isinstance(spec, int) or str(spec).strip().isdigit():
        n = int(spec)
        if n >= len(train):
            raise DatasetError(f"--val-packages {n}: only {len(train)} training packages; "
                               "leave at least one to train on")
        picked = set(random.Random(f"{seed}:val").sample(sorted(p.label for p in train), n))
    else:
        wanted = [w.strip() for w in str(spec).split(",") if w.strip()]
        picked = set()
        for w in wanted:
            hits = [p.label for p in train if w in (p.label, p.name, p.root.name)]
            if not hits:
                raise DatasetError(f"--val-packages: {w!r} is not one of the training packages")
            picked.update(hits)
        if len(picked) >= len(train):
            raise DatasetError("--val-packages takes every training package; leave at least one to train on")
    return [p for p in train if p.label not in picked], [p for p in train if p.label in picked]


def check_splits(splits: dict[str, list[Package]]) -> None:
    """No package in two splits, no package of the held-out eval list in train or val."""
    where: dict[str, str] = {}
    for split, pkgs in splits.items():
        for pk in pkgs:
            real = str(pk.root.resolve())
            if real in where and where[real] != split:
                raise DatasetError(f"{pk.label} is in both the {where[real]} and the {split} split")
            where[real] = split
    banned = held_out_names()
    for split in ("train", "val"):
        for pk in splits.get(split, []):
            if "@" in pk.label.lstrip("@") and pk.name in banned:
                raise DatasetError(f"{pk.label} is on the held-out eval list (src/loralint/data/corpus/eval.txt); "
                                   f"it cannot be in the {split} split")
