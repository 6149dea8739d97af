"""Project configuration, the way ruff reads it: ``[tool.loralint]`` in ``pyproject.toml``, or a
``loralint.toml`` / ``.loralint.toml`` (the same keys at top level), found by walking up from the first
path given (then from the working folder). In one folder ``.loralint.toml`` wins over ``loralint.toml``,
which wins over a ``pyproject.toml`` (one without a ``[tool.loralint]`` table is passed over).

```toml
[tool.loralint]
include = ["src/**"]                 # read only files that match (default: every file a grammar reads)
exclude = ["vendor"]                 # replaces the default list (empty: node_modules and hidden folders
extend-exclude = ["*.generated.js"]  #   are never entered anyway); extend-exclude adds to it
respect-gitignore = true             # skip what .gitignore files ignore (--no-respect-gitignore)
select = ["predicate"]               # rules `check` runs (default: all); --rule overrides it
ignore = []                          # rules taken out of the selection
per-file-ignores = { "tests/**" = ["predicate"] }   # rules not applied to matching files
report-bias = { else-return = 4 }    # `scan`'s decision threshold, per rule or one number for all (default:
                                     #   each adapter's own); --report-bias overrides it
```

Patterns are gitignore patterns (``pathspec``'s gitwildmatch) relative to the folder of the configuration
file: one without a slash matches a name at any depth (``vendor``, ``*.min.js``), one with a slash is
anchored there (``src/legacy/**``). ``--exclude`` patterns on the command line are relative to the
working folder and add to the configuration's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pathspec import GitIgnoreSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAMES = (".loralint.toml", "loralint.toml", "pyproject.toml")
KEYS = {"include", "exclude", "extend-exclude", "respect-gitignore", "select", "ignore", "per-file-ignores",
        "report-bias"}
DEFAULT_EXCLUDE: list[str] = []


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass
class _Patterns:
    """Gitignore-style patterns anchored at a folder, with where they came from (for the skip reason)."""

    root: Path
    patterns: list[str]
    source: str
    spec: GitIgnoreSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = GitIgnoreSpec.from_lines(self.patterns)

    def match(self, path: Path, is_dir: bool = False) -> str | None:
        """The pattern that matches ``path`` (absolute), or None (also for a path outside the root)."""
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return None
        if rel in ("", "."):
            return None
        res = self.spec.check_file(rel + ("/" if is_dir else ""))
        if not res.include:
            return None
        return self.patterns[res.index] if res.index is not None else "?"


@dataclass
class Settings:
    """What a run reads and which rules apply where: the configuration file's keys and the command line's."""

    path: Path | None = None  # the configuration file, if any
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    extend_exclude: list[str] = field(default_factory=list)
    cli_exclude: list[str] = field(default_factory=list)
    respect_gitignore: bool = True
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    #: `scan` reviews one rule: files whose per-file-ignores take it out are not read
    rule: str | None = None
    #: `scan`'s report bias (a number for every rule, or rule id -> number); None: each adapter's own
    report_bias: float | dict[str, float] | None = None

    def __post_init__(self) -> None:
        root = self.root
        shown = self.path.name if self.path else "configuration"
        self._excludes = [p for p in (
            _Patterns(root, self.exclude + self.extend_exclude, f"{shown} exclude"),
            _Patterns(Path.cwd(), self.cli_exclude, "--exclude") if self.cli_exclude else None,
        ) if p is not None and p.patterns]
        self._include = _Patterns(root, self.include, f"{shown} include") if self.include is not None else None
        self._pfi = [(_Patterns(root, [glob], f"{shown} per-file-ignores"), set(rules))
                     for glob, rules in self.per_file_ignores.items()]

    @property
    def root(self) -> Path:
        return Path(os.path.abspath(self.path.parent)) if self.path else Path.cwd()

    def excluded(self, path: str | os.PathLike, is_dir: bool = False) -> str | None:
        """Why ``path`` is excluded (``excluded by pyproject.toml exclude (vendor)``), or None."""
        p = Path(os.path.abspath(path))
        for pats in self._excludes:
            hit = pats.match(p, is_dir)
            if hit:
                return f"excluded by {pats.source} ({hit})"
        return None

    def included(self, path: str | os.PathLike) -> bool:
        """Whether a file passes ``include`` and, for `scan`, is not taken out of its rule."""
        p = Path(os.path.abspath(path))
        if self._include is not None and not self._include.match(p):
            return False
        return not (self.rule and self.rule not in self.rules_for(p, [self.rule]))

    def rules_for(self, path: str | os.PathLike, rule_ids: Iterable[str]) -> list[str]:
        """``rule_ids`` less those ``per-file-ignores`` take out for ``path``."""
        p = Path(os.path.abspath(path))
        drop: set[str] = set()
        for pats, rules in self._pfi:
            if pats.match(p):
                drop |= rules
        return [r for r in rule_ids if r not in drop]

    def selected_rules(self, cli_rules: Iterable[str] | None) -> list[str] | None:
        """The rules `check` runs: ``--rule`` if given, else ``select`` less ``ignore`` (None: all)."""
        if cli_rules:
            return list(cli_rules)
        if self.select is None and not self.ignore:
            return None
        from .rules import all_rules

        chosen = self.select if self.select is not None else list(all_rules())
        return [r for r in chosen if r not in set(self.ignore)]


def _table(path: Path) -> dict | None:
    """The loralint table of a configuration file (None: a pyproject.toml without one)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("loralint")
        return table if isinstance(table, dict) else None
    return data


def find_config(starts: Iterable[str | os.PathLike]) -> Path | None:
    """The configuration file nearest above the first of ``starts`` that exists (files' folders count)."""
    for start in starts:
        p = Path(os.path.abspath(start))
        if not p.exists():
            continue
        d = p if p.is_dir() else p.parent
        for folder in (d, *d.parents):
            for name in CONFIG_NAMES:
                cand = folder / name
                if cand.is_file() and _table(cand) is not None:
                    return cand
        return None
    return None


def _strings(path: Path, key: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: `{key}` must be a list of strings")
    return list(value)


def _report_bias(path: Path | None, value, known_rules: set[str]) -> float | dict[str, float]:
    """``report-bias``: a number, or a table of rule id = number."""
    def num(v, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path}: `{where}` must be a number")
        return float(v)

    if not isinstance(value, dict):
        return num(value, "report-bias")
    bad = [r for r in value if r not in known_rules]
    if bad:
        raise ConfigError(f"{path}: unknown rule {bad[0]!r} in `report-bias` (known: {', '.join(sorted(known_rules))})")
    return {r: num(v, f"report-bias.{r}") for r, v in value.items()}


def load_settings(paths: Iterable[str | os.PathLike] = (), *, exclude: Iterable[str] = (),
                  respect_gitignore: bool | None = None, rule: str | None = None,
                  config: str | os.PathLike | None = None) -> Settings:
    """The run's settings: the configuration found above ``paths`` (or the working folder), then the
    command line's ``--exclude`` and ``--no-respect-gitignore``. Raises :class:`ConfigError`."""
    from .rules import all_rules

    path = Path(config) if config else find_config([*paths, Path.cwd()])
    table = (_table(path) or {}) if path else {}
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown option {unknown[0]!r} in the loralint table "
                          f"(known: {', '.join(sorted(KEYS))})")
    known_rules = set(all_rules())

    def rule_list(key: str) -> list[str]:
        ids = _strings(path, key, table[key])  # type: ignore[arg-type]
        bad = [r for r in ids if r not in known_rules]
        if bad:
            raise ConfigError(f"{path}: unknown rule {bad[0]!r} in `{key}` (known: {', '.join(sorted(known_rules))})")
        return ids

    kw: dict = {}
    for key in ("include", "exclude", "extend-exclude"):
        if key in table:
            kw[key.replace("-", "_")] = _strings(path, key, table[key])  # type: ignore[arg-type]
    if "respect-gitignore" in table:
        if not isinstance(table["respect-gitignore"], bool):
            raise ConfigError(f"{path}: `respect-gitignore` must be true or false")
        kw["respect_gitignore"] = table["respect-gitignore"]
    for key in ("select", "ignore"):
        if key in table:
            kw[key] = rule_list(key)
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError(f"{path}: `per-file-ignores` must be a table of glob = [rule ids]")
        out = {}
        for glob, ids in pfi.items():
            ids = _strings(path, f"per-file-ignores.{glob}", ids)
            bad = [r for r in ids if r not in known_rules]
            if bad:
                raise ConfigError(f"{path}: unknown rule {bad[0]!r} in `per-file-ignores` "
                                  f"(known: {', '.join(sorted(known_rules))})")
            out[glob] = ids
        kw["per_file_ignores"] = out
    if "report-bias" in table:
        kw["report_bias"] = _report_bias(path, table["report-bias"], known_rules)
    if respect_gitignore is not None:
        kw["respect_gitignore"] = respect_gitignore
    return Settings(path=path, cli_exclude=list(exclude), rule=rule, **kw)
