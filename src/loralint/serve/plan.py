"""What `loralint serve` serves: the adapters found or named (PEFT folders, GGUF LoRAs), the base they share,
and the GGUF files llama.cpp loads, converted once from the Hugging Face weights and cached
(``$LORALINT_CACHE/gguf``); and, for GPUs, the vLLM command serving the same names::

    vllm serve BASE_DIR --served-model-name base --enable-lora --max-lora-rank 16 \\
        --lora-modules predicate=ADAPTER_DIR [rule2=DIR2 ...] --host 127.0.0.1 --port 8080

(`loralint serve --engine vllm --print-command` prints it for the installed adapters.)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import models
from .errors import ServeError

#: the name that serves the bare base (every other served name is an adapter)
BASE_NAME = "base"
#: the names a loopback server answers to
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- what to serve


@dataclass
class ServedAdapter:
    name: str
    source: Path  # a PEFT folder or a .gguf LoRA
    gguf: Path | None = None  # the GGUF LoRA llama.cpp loads
    base_spec: str | None = None
    rank: int | None = None
    chat_template: str | None = None  # the adapter folder's own (LlamaFactory saves its training template)


@dataclass
class Plan:
    base_gguf: Path | None
    base_label: str
    base: models.Base
    adapters: list[ServedAdapter] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tokenizer(self):
        """The base's Hugging Face tokenizer, to tokenize prompts as training did (None: llama.cpp's own)."""
        try:
            return models.load_tokenizer(self.base)
        except Exception as e:  # noqa: BLE001 - no tokenizer to be had: llama.cpp tokenizes, with a warning
            self.warnings.append(f"no Hugging Face tokenizer for the base ({type(e).__name__}: {e}); llama.cpp "
                                 "tokenizes prompts, which can split some whitespace differently from training")
            return None


def installed_adapter_dirs() -> list[Path]:
    """Where installed rule adapters live: shipped in the package (``loralint/adapters/<rule>``) and the user's
    cache (``$LORALINT_CACHE/adapters/<rule>``, default ~/.cache/loralint/adapters)."""
    dirs = [Path(str(resources.files("loralint") / "adapters")), models.cache_root() / "adapters"]
    return [d for d in dirs if d.is_dir()]


def discover(specs: list[str], dirs: list[Path]) -> list[ServedAdapter]:
    """Adapters named explicitly (``NAME=PATH`` or ``PATH``) plus every adapter found under ``dirs``."""
    from ..export import is_adapter_dir, read_adapter

    from .engine import gguf_type

    found: dict[str, ServedAdapter] = {}

    def add(name: str | None, path: Path, explicit: bool) -> None:
        path = path.expanduser()
        if path.is_file() and path.suffix == ".gguf":
            if gguf_type(path) != "adapter":
                if explicit:
                    raise ServeError(f"{path} is not a GGUF LoRA adapter (general.type != adapter)")
                return
            sa = ServedAdapter(name or path.stem, path, gguf=path)
        elif is_adapter_dir(path):
            ad = read_adapter(path)
            sa = ServedAdapter(name or ad.name, path, base_spec=ad.base_spec, rank=ad.rank,
                               chat_template=_folder_template(path))
        else:
            if explicit:
                raise ServeError(f"{path} is neither a PEFT adapter folder nor a .gguf LoRA")
            return
        if sa.name == BASE_NAME:
            raise ServeError(f"an adapter cannot be called {BASE_NAME!r} (that name serves the bare base)")
        if sa.name in found and explicit:
            raise ServeError(f"two adapters are called {sa.name!r}: name them with NAME=PATH")
        found.setdefault(sa.name, sa)

    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        add(name or None, Path(path), True)
    for d in dirs:
        for child in sorted(d.iterdir()):
            add(None, child, False)
    return list(found.values())


def _folder_template(path: Path) -> str | None:
    """A chat template saved in an adapter folder (chat_template.jinja or tokenizer_config.json), if any."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "tokenizer_config.json").is_file():
        t = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
        return t if isinstance(t, str) else None
    return None


def _base_key(spec: str | None) -> str | None:
    """One identity for the several spellings of a base (alias, materialised folder, its source GGUF)."""
    if not spec:
        return None
    try:
        b = models.resolve(spec)
    except models.ModelNotFound:
        return spec
    if b.gguf_path:
        return str(b.gguf_path.resolve())
    marker = Path(b.load_dir, "loralint-base.json")
    if b.kind == "dir" and marker.is_file():
        src = json.loads(marker.read_text()).get("source")
        if src:
            return str(Path(src).resolve())
    return str(Path(b.load_dir).resolve()) if b.kind == "dir" else b.load_dir


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def plan(base: str | None, adapter_specs: list[str], adapter_dirs: list[Path] | None = None,
         base_type: str = "f16", cache: Path | None = None, convert: bool = True, progress=lambda m: None) -> Plan:
    """Decide (and, with ``convert``, make) the GGUF files a llama.cpp server loads."""
    from ..gguf_export import lora_to_gguf, model_to_gguf

    dirs = installed_adapter_dirs() if adapter_dirs is None else adapter_dirs
    adapters = discover(adapter_specs, dirs)
    warnings: list[str] = []
    cache = (cache or models.cache_root()) / "gguf"
    if base is None:
        specs = {a.base_spec for a in adapters if a.base_spec}
        keys = {_base_key(s) for s in specs}
        if len(keys) > 1:
            raise ServeError(f"the adapters name different bases ({', '.join(sorted(specs))}): pass --base, or "
                             "serve them separately")
        if not specs:
            raise ServeError("no base model: pass --base (a .gguf file, a model folder, a hub id, or "
                             f"`{models.EMBEDDED}`)")
        base = next(iter(specs))
    try:
        b = models.resolve(base)
    except models.ModelNotFound as e:
        raise ServeError(str(e)) from e
    bkey = _base_key(base)
    for a in adapters:
        if a.base_spec and _base_key(a.base_spec) != bkey:
            warnings.append(f"adapter {a.name!r} was trained on {a.base_spec!r}, served on {base!r}")
    # the base as GGUF. A .gguf file given as the base is used as it is. Any other base (a folder, the embedded
    # model) is converted once, to `base_type` (f16 by default), from the Hugging Face weights the adapters were
    # trained on: the closest llama.cpp gets to transformers (token for token on the test models; llama.cpp
    # rounds activations to 8 bits against Q4/Q8 weights), and for SmolLM2 on 2 cores also faster than the
    # embedded Q4_1 file with a LoRA on top (benchmarks/serve_speed.py). `base_type="source"` keeps the GGUF
    # the base came from (the embedded Q4_1: 98 MB instead of 270 MB).
    marker = Path(b.load_dir, "loralint-base.json") if b.kind == "dir" else None
    source = b.gguf_path if b.kind == "embedded" else (
        Path(json.loads(marker.read_text()).get("source", "")) if marker and marker.is_file() else None)
    if b.kind == "gguf" or not convert:
        base_gguf = b.gguf_path  # (vLLM, convert=False, loads the Hugging Face base itself)
    elif base_type == "source":
        if source is None or not source.is_file():
            raise ServeError(f"--base-type source: the base {base!r} did not come from a GGUF file")
        base_gguf = source
    elif b.kind == "hub":
        raise ServeError(f"{base!r} is a hub id: download it and pass the folder, or pass a .gguf file")
    else:
        d = Path(models.model_dir(b))
        base_gguf = cache / f"base-{d.name}-{_fingerprint(d)}-{base_type}.gguf"
        if not base_gguf.is_file():
            progress(f"converting base {d} to {base_gguf.name}")
            model_to_gguf(d, base_gguf, base_type, name=str(base))
    base_cfg = None
    for a in adapters:
        if a.gguf:
            continue
        a.gguf = cache / f"lora-{a.name}-{_fingerprint(a.source)}.gguf"
        if convert and not a.gguf.is_file():
            if base_cfg is None:
                from ..export import base_config

                base_cfg = base_config(b)
            progress(f"converting adapter {a.name} to {a.gguf.name}")
            lora_to_gguf(a.source, a.gguf, base_cfg, "f32", name=a.name)
    return Plan(base_gguf, str(base), b, adapters, warnings)


def vllm_command(p: Plan, host: str, port: int, max_model_len: int | None = None) -> list[str]:
    """The vLLM command serving the same names (base + one LoRA module per rule) on a GPU."""
    if p.base.kind == "gguf":
        raise ServeError("vLLM needs a Hugging Face base folder or hub id, not a GGUF file: pass --base DIR")
    base_hf = p.base.load_dir if p.base.kind == "hub" else str(models.model_dir(p.base))  # embedded: materialised
    peft = [a for a in p.adapters if not (a.source.is_file())]
    if len(peft) != len(p.adapters):
        raise ServeError("vLLM loads PEFT adapter folders, not GGUF LoRAs: name the adapter folders")
    cmd = ["vllm", "serve", base_hf, "--served-model-name", BASE_NAME, "--host", host, "--port", str(port)]
    if peft:
        cmd += ["--enable-lora", "--max-loras", str(len(peft)),
                "--max-lora-rank", str(_vllm_rank(max((a.rank or 16) for a in peft))), "--lora-modules"]
        cmd += [f"{a.name}={a.source.resolve()}" for a in peft]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd


def _vllm_rank(r: int) -> int:
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):  # vLLM accepts only these
        if r <= allowed:
            return allowed
    return r


def vllm_available() -> bool:
    return shutil.which("vllm") is not None


__all__ = ["BASE_NAME", "LOOPBACK_HOSTS", "Plan", "ServedAdapter", "discover", "installed_adapter_dirs", "is_loopback",
           "plan", "vllm_available", "vllm_command"]
