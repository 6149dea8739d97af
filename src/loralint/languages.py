"""Languages by file extension and their tree-sitter grammars (one parser per grammar per thread)."""

from __future__ import annotations

import threading
from functools import lru_cache

from tree_sitter import Language, Parser, Tree

#: extension -> (grammar name, markdown fence tag used in prompts)
EXTENSIONS: dict[str, tuple[str, str]] = {
    ".js": ("javascript", "js"),
    ".mjs": ("javascript", "js"),
    ".cjs": ("javascript", "js"),
    ".jsx": ("javascript", "jsx"),
    ".ts": ("typescript", "ts"),
    ".mts": ("typescript", "ts"),
    ".cts": ("typescript", "ts"),
    ".tsx": ("tsx", "tsx"),
}


def grammar_for(path: str) -> str | None:
    """The grammar name for a path, or None when the extension is not one we read."""
    dot = path.rfind(".")
    entry = EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None
    return entry[0] if entry else None


def fence_for(path: str) -> str:
    dot = path.rfind(".")
    entry = EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None
    return entry[1] if entry else "js"


@lru_cache(maxsize=None)
def language(name: str) -> Language:
    if name == "javascript":
        import tree_sitter_javascript as ts

        return Language(ts.language())
    import tree_sitter_typescript as ts

    if name == "typescript":
        return Language(ts.language_typescript())
    if name == "tsx":
        return Language(ts.language_tsx())
    raise ValueError(f"unknown grammar {name!r}")


_local = threading.local()


def parse(source: bytes, grammar: str) -> Tree:
    parsers = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    parser = parsers.get(grammar)
    if parser is None:
        parser = parsers[grammar] = Parser(language(grammar))
    return parser.parse(source)
