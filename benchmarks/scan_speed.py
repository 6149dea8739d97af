"""How fast `loralint scan` reviews code: in process, and through an OpenAI-compatible server with the
concurrent client against a sequential one (the seed's scan.sh: one request at a time).

    python benchmarks/scan_speed.py                          # CPU, the shipped adapter, a few held-out files
    python benchmarks/scan_speed.py --forced --answer-tokens 128      # decode-heavy answers (seed-like)
    python benchmarks/scan_speed.py --device cuda --files 2651 --forced --random-weights \
        --base .carry/scan/smollm2 --corpus .carry/scan/corpus --packages lodash moment eslint   # a GPU box

What answers: the adapter (``--adapter``, by default the shipped one) on its base. With ``--forced`` (or
when no adapter is shipped) the base model (``--base``, SmolLM2-135M by default) computes every step for
real but its output is forced, token by token, to the oracle's answer for the window: the work per window
(prefill, one decode step per answer token, stop at the end of turn) is a perfect model's, and the
findings come out right, so the whole path (parsing, verification, reports) is timed too.
``--random-weights`` builds the base from its config alone (same compute, nothing to carry: for a GPU
machine without the checkpoint).

The server rows: a small loopback OpenAI-compatible server (stdlib HTTP) over the same in-process engine
that batches dynamically: requests arriving within ``--wait-ms`` of each other (and all those that queue
up while a batch runs) are answered by one batched ``generate``; the sequential client keeps one request
in flight, the concurrent one ``--concurrency``. With ``llama_cpp`` importable, a real llama.cpp server
(``loralint serve`` on the embedded GGUF base, bare base answers) gets the same two clients, and
``--llamacpp-gguf FILE`` adds llama-cpp-python in process.

Prints a table and writes benchmarks/results/scan_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see loralint.commands.scan_cmd.cpu_threads_yield

from loralint import models  # noqa: E402
from loralint.backends import Backend, BackendError, resolve_adapter  # noqa: E402
from loralint.backends.transformers import TransformersBackend  # noqa: E402
from loralint.scanner import scan  # noqa: E402


# ------------------------------------------------------------------------------------- the forced answers
def oracle_answer(messages: list[dict]) -> str:
    """The oracle's answer for a window prompt (its lines are numbered ``N| code``)."""
    from loralint.checker import oracle_findings
    from loralint.rules import get_rule
    from loralint.sources import SourceFile

    body = messages[-1]["content"]
    code = body.split("```", 1)[1].split("\n", 1)[1].rsplit("\n```", 1)[0]
    rows = [r.split("|", 1) for r in code.split("\n")]
    first = int(rows[0][0])
    text = "\n" * (first - 1) + "\n".join(r[1][1:] if len(r) > 1 else "" for r in rows)
    rule = get_rule("predicate")
    found, _ = oracle_findings(SourceFile("w.js", "w.js", "javascript", text.encode()), [rule])
    return rule.render_answer(found)


class ForcedAnswers(TransformersBackend):
    """The real model's compute with a perfect model's output: each step's token is forced to the oracle's."""

    #: pad every answer with blank lines to this many tokens (the seed's min_tokens-style long answers)
    answer_tokens = 0

    #: window prompt -> oracle answer token ids, filled by :meth:`prepare` before the clock starts
    answers: dict[str, list[int]] = {}

    def prepare(self, paths: list[str], window_lines: int = 30) -> None:
        """The oracle's answers for every window of ``paths``, so timing leaves them out."""
        from loralint.languages import fence_for, grammar_for
        from loralint.rules import get_rule
        from loralint.windows import file_windows, window_messages

        rule = get_rule("predicate")
        prompts = []
        for p in paths:
            lines, wins = file_windows(Path(p).read_bytes(), grammar_for(p), target=window_lines)
            prompts += [window_messages(rule, lines, w, fence_for(p)) for w in wins]
        answers = [oracle_answer(m) for m in prompts]
        ids = self.tok(answers, add_special_tokens=False)["input_ids"] if answers else []
        self.answers = {m[-1]["content"]: i for m, i in zip(prompts, ids)}

    supports_constraints = False  # forced answers (padded with line breaks) are not constrained

    def generate(self, prompts, max_new_tokens, progress=None):
        eos = self.eos_ids[0]
        nl = self.tok("\n", add_special_tokens=False)["input_ids"]
        self._targets = []
        for m in prompts:
            ids = self.answers.get(m[-1]["content"])
            ids = list(ids) if ids is not None else self.tok(oracle_answer(m), add_special_tokens=False)["input_ids"]
            while len(ids) < self.answer_tokens:
                ids += nl
            self._targets.append(ids + [eos])
        if self.answer_tokens:
            caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
            max_new_tokens = [max(c, len(t)) for c, t in zip(caps, self._targets)]
        return super().generate(prompts, max_new_tokens, progress)

    def steer(self, logits, rows, step):
        import torch

        eos = self.eos_ids[0]
        want = torch.tensor([t[step] if step < len(t) else eos for t in (self._targets[i] for i in rows)],
                            device=logits.device)
        forced = torch.full_like(logits, float("-inf"))
        return forced.scatter_(1, want[:, None], 0.0)


def random_weight_model(base: str, device: str, dtype):
    """The base's architecture with random weights (same compute; nothing to download or carry)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(models.model_dir(base))
    for k in ("quantization_config",):
        if hasattr(cfg, k):
            delattr(cfg, k)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device)


# ---------------------------------------------------------------------- a dynamically batching server
class BatchingServer:
    """OpenAI-compatible ``/v1/chat/completions`` on loopback over one in-process backend.

    Requests wait in a queue; a single worker takes the first, waits ``wait_ms`` for more (and takes every
    request that queued meanwhile, up to ``max_batch``), and answers them with one batched ``generate``."""

    def __init__(self, backend, max_batch: int = 64, wait_ms: float = 5.0, model: str = "loralint"):
        self.backend, self.max_batch, self.wait = backend, max_batch, wait_ms / 1000
        self.model = model
        self.q: queue.Queue = queue.Queue()
        self.batches: list[int] = []
        self.httpd: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.perf_counter() + self.wait
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    batch.append(self.q.get(timeout=max(0.0, left)) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            self.batches.append(len(batch))
            try:
                outs = self.backend.generate([b["messages"] for b in batch], [b["max_tokens"] for b in batch])
            except Exception as e:  # noqa: BLE001
                outs = [BackendError(str(e))] * len(batch)
            for b, o in zip(batch, outs):
                b["out"] = o
                b["done"].set()

    def __enter__(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, obj: dict) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                item = {"messages": body["messages"], "max_tokens": int(body.get("max_tokens") or 256),
                        "done": threading.Event()}
                server.q.put(item)
                item["done"].wait()
                out = item["out"]
                if isinstance(out, BackendError):
                    self._send(500, {"error": {"message": out.message}})
                    return
                self._send(200, {"object": "chat.completion", "model": server.model, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": out.text},
                    "finish_reason": "length" if out.truncated else "stop"}],
                    "usage": {"completion_tokens": out.tokens}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()


def llamacpp_server_rows(paths: list[str], concurrency: int, threads: int | None) -> tuple[list[dict], dict]:
    """A real llama.cpp server (``loralint serve``: llama-cpp-python, the embedded GGUF base, model "base"),
    sequential against concurrent client. Its answers are the bare base model's (nothing is forced), so every
    window decodes to its token limit; the server runs one request at a time."""
    import llama_cpp  # noqa: F401  (ImportError: no row)

    from loralint import serve

    engine = serve.Engine(models.embedded_gguf(), n_ctx=4096, n_threads=threads)
    srv = serve.make_server(engine, "127.0.0.1", 0)
    serve.serve_in_thread(srv)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        seq = measure("llama.cpp server (loralint serve, base GGUF), sequential", paths, api=url, model="base",
                      concurrency=1, timeout=3600)
        conc = measure(f"llama.cpp server (loralint serve, base GGUF), {concurrency} in flight", paths, api=url,
                       model="base", concurrency=concurrency, timeout=3600)
    finally:
        srv.shutdown()
        srv.server_close()
    return [seq, conc], {"ratio_concurrent_vs_sequential": round(seq["seconds"] / conc["seconds"], 2),
                         "note": "one request at a time (one llama_cpp.Llama); bare base answers, not forced"}


# ------------------------------------------------------------------------------------------------ files
def corpus_files(corpus: Path, packages: list[str] | None, limit: int) -> list[str]:
    """The first ``limit`` readable files of the held-out packages (fetched into ``corpus`` if needed)."""
    from loralint import corpus as corpus_mod

    eval_list = ROOT / "src" / "loralint" / "data" / "corpus" / "eval.txt"
    pkgs = corpus_mod.read_list(eval_list)
    folders = [corpus / p.folder for p in pkgs if not packages or p.spec in packages or p.name in packages]
    if packages:  # any unpacked package of the corpus folder may be named (speed does not need held-out code)
        folders += [d for d in sorted(corpus.iterdir()) if d.is_dir() and d not in folders
                    and (d.name in packages or d.name.rsplit("@", 1)[0] in packages)]
    if not all(d.is_dir() for d in folders):
        corpus_mod.fetch(eval_list, corpus)
    return readable_files(folders, limit)


def readable_files(folders: list[Path], limit: int) -> list[str]:
    """The files loralint reads in ``folders``, in order, at most ``limit``."""
    from loralint.sources import SourceFile, discover, load

    out: list[str] = []
    for d in folders:
        files, _ = discover([str(d)])
        for f in files:
            if isinstance(load(f), SourceFile):
                out.append(f)
            if len(out) >= limit:
                return out
    return out


def measure(label: str, paths: list[str], **kw) -> dict:
    t = time.perf_counter()
    res = scan(paths, cache=False, **kw)
    wall = time.perf_counter() - t
    st = res.stats()
    gen = res.generated_tokens
    return {"label": label, "files": st["files_checked"], "windows": st["windows"], "seconds": round(wall, 2),
            "files_per_min": round(60 * st["files_checked"] / wall, 1),
            "windows_per_min": round(60 * st["windows"] / wall, 1),
            "generated_tokens": gen, "tokens_per_s": round(gen / wall, 1) if gen else None,
            "findings": st["findings"], "unverified": st["unverified"], "errors": st["files_with_errors"],
            "_keys": sorted((f.path, f.line, f.kind, f.column, f.end_line, f.end_column) for f in res.findings)}


# ------------------------------------------------------------------------ gpu engine vs the reference engine
class Recorder(Backend):
    """A backend that passes prompts to the engine ``make()`` builds and keeps every answer (keyed by the prompt's
    text); past ``deadline`` (time.monotonic()), chunks are answered with an error without asking the model. The
    engine is built on first use (:meth:`load`), as ``loralint scan`` builds its own: a scan of many files builds
    it in a thread while its host side runs in worker processes."""

    def __init__(self, make, deadline: float, constrained: bool = False, label: str = "engine"):
        self.make, self.deadline, self.label = make, deadline, label
        self.inner = None
        self.load_s = 0.0
        self.answers: dict[str, object] = {}
        self.name = label
        self.timed_out = False
        # constrained: the scan builds each window's answer grammar (as `loralint scan` does by default) and the
        # engine decodes under it (both engines compared support it); its tokenizer and end ids are read through
        # this wrapper
        self.constrained = constrained

    @property
    def loaded(self) -> bool:
        return self.inner is not None

    def load(self):
        if self.inner is None:
            t0 = time.perf_counter()
            self.inner = self.make()
            self.load_s = time.perf_counter() - t0
            self.name = getattr(self.inner, "name", self.label)
        return self.inner

    @property
    def supports_constraints(self) -> bool:
        return bool(self.constrained and (self.inner is None or getattr(self.inner, "supports_constraints", False)))

    @property
    def tok(self):
        return getattr(self.load(), "tok", None) or getattr(self.inner, "tokenizer", None)

    @property
    def eos_ids(self):
        return getattr(self.load(), "eos_ids", None)

    def identity(self):
        return {"backend": "recorder", "label": self.label}

    def close(self):
        pass

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None):
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return [BackendError("benchmark phase timed out")] * len(prompts)
        kw = {"constraints": constraints} if constraints is not None else {}
        outs = self.load().generate(prompts, max_new_tokens, progress, **kw)
        for m, o in zip(prompts, outs):
            self.answers[m[-1]["content"]] = o
        return outs

    @property
    def generated_tokens(self):
        return getattr(self.inner, "generated_tokens", 0)

    @property
    def scan_chunk(self):
        return self.load().scan_chunk


def corpus_files_all(corpus: Path, limit: int) -> list[str]:
    """Readable files of the corpus packages (eval list, then train list), in order, at most ``limit``;
    packages not unpacked under ``corpus`` are left out (a GPU machine has no network)."""
    from loralint import corpus as corpus_mod

    lists = ROOT / "src" / "loralint" / "data" / "corpus"
    folders = [corpus / p.folder for lst in ("eval.txt", "train.txt") for p in corpus_mod.read_list(lists / lst)]
    return readable_files([d for d in folders if d.is_dir()], limit)


def engine_phase(label: str, make, paths: list[str], budget_s: float, chunk: int | None,
                 constrained: bool = False, live: dict | None = None) -> tuple[dict, Recorder | None]:
    """Build an engine (timed: model load included) and scan ``paths`` with it, answer cache off; ``live``: its
    recorder is kept there under "rec" while it runs (the watchdog's partial comparison)."""
    import gc

    import torch

    t0 = time.perf_counter()
    deadline = time.monotonic() + budget_s
    rec = Recorder(make, deadline, constrained, label)
    if live is not None:
        live["rec"] = rec
    try:  # built by the scan, as `loralint scan` builds its engine: overlapped with the host side where it can be
        res = scan(paths, backend=rec, cache=False, chunk=chunk, constrained=constrained)
    except Exception as e:  # noqa: BLE001 - the phase says why and the benchmark goes on
        return {"label": label, "error": f"{type(e).__name__}: {e}"}, None
    wall = time.perf_counter() - t0
    engine = rec.inner
    if engine is None:
        return {"label": label, "error": "no window needed the model"}, None
    load_s = rec.load_s
    st = res.stats()
    prof = engine.profile() if hasattr(engine, "profile") else {}
    prompt_tokens = getattr(engine, "prompt_tokens", 0)
    row = {
        "label": label, "engine": type(engine).__name__,
        "settings": engine.settings() if hasattr(engine, "settings") else {
            "engine": getattr(engine, "engine", None), "batch_tokens": getattr(engine, "batch_tokens", None),
            "max_batch": getattr(engine, "max_batch", None), "device": getattr(engine, "device", None),
            "dtype": str(getattr(engine, "dtype", "")).replace("torch.", "") or None},
        "chunk": chunk or rec.scan_chunk,
        "timed_out": rec.timed_out, "files": st["files_checked"], "windows": st["windows"],
        "windows_answered": len(rec.answers), "seconds": round(wall, 2), "load_seconds": round(load_s, 2),
        "load_wait_seconds": round(res.load_wait_seconds, 2), "host_workers": res.host_workers,
        "scan_phases": res.phases,
        "scan_seconds": round(res.seconds, 2), "generate_seconds": round(res.generate_seconds, 2),
        "files_per_min": round(60 * st["files_checked"] / wall, 1), "windows_per_s": round(st["windows"] / wall, 1),
        "prompt_tokens": prompt_tokens, "prompt_tokens_per_s": round(prompt_tokens / wall) if prompt_tokens else None,
        "generated_tokens": res.generated_tokens, "findings": st["findings"], "errors": st["files_with_errors"],
        # what went wrong, where (the first files': a phase past its deadline says so; an engine's own failure too)
        "error_samples": [f"{'/'.join(r.path.rsplit('/', 2)[-2:])}: {str(r.error)[:240]}" for r in res.errors[:8]],
        "profile": {"load": round(load_s, 2), "load_wait": round(res.load_wait_seconds, 2),
                    "cpu_side": round(res.seconds - res.generate_seconds - res.load_wait_seconds, 2),
                    "generate": round(res.generate_seconds, 2)} | prof,
    }
    if prompt_tokens and prof.get("prefill"):
        row["prefill_tokens_per_s"] = round((prompt_tokens - prof.get("prefix_tokens_saved", 0)) / prof["prefill"])
    rec.inner = None  # the next phase gets the GPU memory back
    if hasattr(engine, "_shapes"):
        engine._shapes.clear()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row, rec


#: what each gpu engine profile entry is (seconds unless said otherwise), for the table
PROFILE_NOTES = {
    "load": "engine built: model + adapter + tokenizer + self-check (load_* below break it down); in a thread "
            "while the host side runs, where the scan has host workers",
    "load_wait": "of load: the time the scan waited for it after its host side (the part not overlapped)",
    "cpu_side": "scan outside generate and the load wait: files, windows, grammars, prompts, verification",
    "generate": "wall time inside generate",
    "tokenize": "chat templates + tokenizer (a background thread: overlaps the GPU)",
    "tokenize_wait": "time generate waited for tokenization (the part not overlapped)",
    "prefix": "shared-prefix forwards", "prefill": "prefill forwards (eager)",
    "decode": "decode loops (graph replays, syncs, compactions)", "capture": "CUDA graph captures",
    "compact": "gathering live rows into smaller buffers",
    "prompt_tokens": "tokens", "prefix_tokens_saved": "tokens not recomputed (shared prefix)",
    "padding_tokens": "pad tokens computed in prefill forwards", "prefill_forwards": "count",
    "decode_steps": "decode steps, summed over batches", "graphs_captured": "count",
    "row_steps": "buffer rows x decode steps (KV rows read)", "live_row_steps": "of which rows still answering",
    "wasted_row_steps": "row_steps - live_row_steps", "compactions": "count", "generated_tokens": "tokens",
    "graph_steps": "decode steps replayed from a CUDA graph (the rest eager: big shapes)",
    "fills": "continuous decode: packed prefills into finished rows' slots",
    "slot_shapes": "continuous decode: its buffers (rows, columns): one a generate call, and each growth",
    "slot_leftovers": "continuous decode: prompts too long for its buffer, answered in batches after",
    "load_model": "of load: base + adapter (merged), on the device", "load_tokenizer": "of load: tokenizer",
    "load_self_check": "of load: the engine's start-up check against a plain forward",
    "load_imports_here": "of load: from the gpu engine's create() to the engine's own start (torch, transformers' "
                         "attention interface); the rest of load before it is the imports and look-ups before create()",
    "load_engine": "of load: the engine built and checked (model, tokenizer, self-check and the rest)",
}


def print_profile(prof: dict) -> None:
    """The engine's profile as a table: where the time went and the device-independent counters."""
    if not prof:
        return
    print("profile | value | what")
    for k, v in prof.items():
        print(f"{k} | {v} | {PROFILE_NOTES.get(k, '')}")


def identical(rec: "Recorder", ref: "Recorder") -> tuple[int, float | None]:
    """Windows both recorders answered, and the share whose answer text is the same (an error of ``ref``'s is
    never the same)."""
    both = [k for k in ref.answers if k in rec.answers]
    same = sum(getattr(rec.answers[k], "text", None) == getattr(ref.answers[k], "text", None)
               and not isinstance(ref.answers[k], BackendError) for k in both)
    return len(both), (round(same / len(both), 4) if both else None)


def differing(rec: "Recorder", ref: "Recorder", limit: int = 12) -> list[dict]:
    """The first ``limit`` windows both answered differently: the window, and each answer's text."""
    out = []
    for k in ref.answers:
        if k in rec.answers and getattr(rec.answers[k], "text", None) != getattr(ref.answers[k], "text", None):
            out.append({"window_chars": len(str(k)), "window_tail": str(k)[-300:],
                        "engine": getattr(rec.answers[k], "text", repr(rec.answers[k])),
                        "reference": getattr(ref.answers[k], "text", repr(ref.answers[k]))})
            if len(out) >= limit:
                break
    return out


def cuda_device_name() -> str | None:
    """The GPU's name without starting CUDA in this process (nvidia-smi): the first phase's scan pays the CUDA
    start, as a user's first scan does; torch's name where nvidia-smi is missing (that starts CUDA here)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    import torch

    return torch.cuda.get_device_name()


def compare_engines(a) -> int:
    """The gpu engine and the reference engine on the same files, same run: speed and identical answers."""
    import threading

    import torch

    from loralint.backends import gpu_engine, shipped_adapter_dir

    t_start = time.monotonic()
    device = a.device or models.default_device()
    gpu = device.startswith("cuda")
    gpu_name = cuda_device_name() if gpu else None
    name = "h200" if gpu_name and "H200" in gpu_name else ("gpu" if gpu else "cpu")
    out = Path(a.out or ROOT / "benchmarks" / "results" /
               ("scan_speed_h200.json" if name == "h200" else f"scan_speed_engines_{name}.json"))
    info: dict = {"benchmark": "scan_speed (engines)", "device": device,
                  "gpu": gpu_name, "torch": torch.__version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "phases": {}}

    def write(note: str | None = None) -> None:
        if note:
            info["note"] = note
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=2) + "\n")

    live: dict = {}  # the recorder of the phase running, and the gpu engine's once it is done

    # whatever happens, the JSON is written before the caller's limit, with the windows the reference had answered
    # compared to the gpu engine's (a partial comparison, said so)
    def watchdog():
        gpu_rec, ref_rec = live.get("gpu"), live.get("rec")
        if gpu_rec is not None and ref_rec is not None and ref_rec is not gpu_rec and "answers_compared" not in info:
            snap = types.SimpleNamespace(answers=dict(ref_rec.answers))  # (a copy: the phase is still running)
            info["answers_compared"], info["answers_identical_fraction"] = identical(gpu_rec, snap)
            info["differing_answers"] = differing(gpu_rec, snap)
            info["answers_compared_note"] = (f"partial: the windows {ref_rec.label} had answered when the watchdog "
                                             "stopped it")
        write(f"stopped by the watchdog after {a.total_budget:.0f}s; the phases above are those that finished")
        print(f"watchdog: written {out}", file=sys.stderr)
        os._exit(3)

    timer = threading.Timer(a.total_budget, watchdog)
    timer.daemon = True
    timer.start()

    import transformers

    info["transformers"] = transformers.__version__
    adapter = resolve_adapter(a.adapter or str(shipped_adapter_dir()))
    base = None if a.base == models.EMBEDDED else a.base
    n = a.limit_files or (2000 if gpu else 8)
    paths = corpus_files_all(Path(a.corpus), n)
    info["files_asked"] = len(paths)
    info["adapter"] = str(adapter.path)
    print(f"{len(paths)} files from {a.corpus}; adapter {adapter.path}; {device}", file=sys.stderr)
    write()
    left = lambda: a.total_budget - (time.monotonic() - t_start) - 15  # noqa: E731

    def make_gpu():
        if gpu:
            return gpu_engine.create(adapter, base=base, device=device, batch_tokens=a.batch_tokens,
                                     max_batch=a.max_batch)
        return gpu_engine.GpuEngine(adapter, base=base, device=device)  # a CPU: the same engine, no CUDA graphs

    def make_ref():
        return TransformersBackend(adapter, base=base, device=device, engine="batched")

    # a short warm-up of nothing: the model load of each phase is timed, as a user's scan pays it
    info["decoding"] = "constrained (the scan's default: each window's answer grammar)" if a.constrained else "free"
    row_gpu, rec_gpu = engine_phase("gpu engine", make_gpu, paths, min(a.phase_budget, left() * 0.45), a.chunk,
                                    a.constrained, live)
    live["gpu"] = rec_gpu
    info["phases"]["gpu"] = row_gpu
    info.update({k: row_gpu.get(k) for k in ("files", "windows", "seconds", "files_per_min", "windows_per_s",
                                              "prompt_tokens_per_s")})
    info["engine"] = row_gpu.get("engine")
    info["engine_settings"] = row_gpu.get("settings")
    info["profile"] = row_gpu.get("profile")
    write()
    print(f"gpu engine: {row_gpu.get('files_per_min')} files/min", file=sys.stderr)
    if a.compare_decode:  # the same engine decoding batch by batch (the engine before continuous decoding)
        os.environ["LORALINT_GPU_DECODE"] = "batches"
        try:
            row_b, rec_b = engine_phase("gpu engine, batch by batch (LORALINT_GPU_DECODE=batches)", make_gpu, paths,
                                        min(a.phase_budget, left() * 0.4), a.chunk, a.constrained)
        finally:
            os.environ.pop("LORALINT_GPU_DECODE", None)
        info["phases"]["gpu_batches"] = row_b
        if rec_gpu is not None and rec_b is not None:
            info["slots_vs_batches_identical_fraction"] = identical(rec_gpu, rec_b)[1]
            if row_b.get("seconds") and row_gpu.get("seconds"):
                info["speedup_vs_batches"] = round(row_b["seconds"] / row_gpu["seconds"], 2)
        write()
    if not a.skip_reference:
        row_ref, rec_ref = engine_phase("reference engine (transformers, batched)", make_ref, paths,
                                        min(a.phase_budget, left()), a.ref_chunk, a.constrained, live)
        info["phases"]["reference"] = row_ref
        if rec_gpu is not None and rec_ref is not None:
            info["answers_compared"], info["answers_identical_fraction"] = identical(rec_gpu, rec_ref)
            if row_ref.get("seconds") and row_gpu.get("seconds") and not row_ref.get("timed_out"):
                info["speedup_vs_reference"] = round(row_ref["seconds"] / row_gpu["seconds"], 2)
            elif row_ref.get("windows_answered") and row_gpu.get("windows_per_s"):
                ref_rate = row_ref["windows_answered"] / max(row_ref["seconds"], 1e-9)
                info["speedup_vs_reference"] = round(row_gpu["windows_per_s"] / ref_rate, 2)
                info["speedup_note"] = "the reference phase timed out: windows answered per second compared"
            info["differing_answers"] = differing(rec_gpu, rec_ref)
        write()
        if a.reference_twice and rec_ref is not None:  # the noise floor: the same engine, other batch shapes
            def make_ref2():
                return TransformersBackend(adapter, base=base, device=device, engine="batched",
                                           max_batch=a.reference_twice)

            row_r2, rec_r2 = engine_phase(f"reference engine again, max_batch {a.reference_twice}", make_ref2,
                                          paths, min(a.phase_budget, left()), a.ref_chunk, a.constrained)
            info["phases"]["reference_again"] = row_r2
            if rec_r2 is not None:
                info["reference_self_compared"], info["reference_self_identical_fraction"] = identical(rec_r2,
                                                                                                       rec_ref)
                info["reference_self_differing_answers"] = differing(rec_r2, rec_ref)
    timer.cancel()
    write()
    cols = ("phase", "files", "windows", "seconds", "files/min", "windows/s", "prompt tok/s", "load s", "errors")
    print(" | ".join(cols))
    for r in info["phases"].values():
        print(" | ".join(str(x) for x in (r.get("label"), r.get("files"), r.get("windows"), r.get("seconds"),
                                          r.get("files_per_min"), r.get("windows_per_s"),
                                          r.get("prompt_tokens_per_s"), r.get("load_seconds"),
                                          r.get("errors", r.get("error")))))
    print(f"answers identical: {info.get('answers_identical_fraction')} of {info.get('answers_compared')}; "
          f"speedup {info.get('speedup_vs_reference')}x")
    if "reference_self_identical_fraction" in info:
        print(f"reference against itself (other batch shapes): {info['reference_self_identical_fraction']} of "
              f"{info['reference_self_compared']}")
    print("scan phases (s):", json.dumps((info["phases"].get("gpu") or {}).get("scan_phases")))
    print_profile(info.get("profile") or {})
    print(f"written {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", help="A trained adapter folder (default: the shipped one; without one, --forced).")
    ap.add_argument("--forced", action="store_true",
                    help="The base model's compute with every answer forced to the oracle's (no adapter needed).")
    ap.add_argument("--base", default=models.EMBEDDED)
    ap.add_argument("--random-weights", action="store_true", help="The base's architecture, random weights.")
    ap.add_argument("--device", default=None)
    ap.add_argument("--engine", default="batched", choices=("batched", "generate", "continuous"))  # (not --compare-engines)
    ap.add_argument("--files", type=int, default=None, help="Files for the in-process run (CPU 8, GPU 2000).")
    ap.add_argument("--server-files", type=int, default=None, help="Files for the server runs (CPU 6, GPU 400).")
    ap.add_argument("--packages", nargs="*", help="Held-out packages to take files from (default: all, in order).")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--wait-ms", type=float, default=10.0)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--llamacpp-gguf", help="Also time llama-cpp-python in process on this GGUF.")
    ap.add_argument("--skip-llamacpp-server", action="store_true",
                    help="No llama.cpp server rows (they run when llama_cpp is importable).")
    ap.add_argument("--llamacpp-files", type=int, default=2, help="Files for the llama.cpp server rows.")
    ap.add_argument("--no-force", action="store_true",
                    help="Random weights, nothing forced: every window decodes to its token limit (engine comparison).")
    ap.add_argument("--answer-tokens", type=int, default=0,
                    help="Pad forced answers with blank lines to N tokens (decode-heavy, like the seed's min_tokens).")
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare-engines", action="store_true",
                    help="The gpu engine against the reference engine on the corpus packages' files (eval and "
                         "train lists), model load included, answer cache off: benchmarks/results/"
                         "scan_speed_<h200|gpu|cpu>.json. The options below apply to it.")
    ap.add_argument("--limit-files", type=int, default=None, help="Files (default: GPU 2000, CPU 8).")
    ap.add_argument("--chunk", type=int, default=None,
                    help="Windows per generate call (scan's chunk; default: what the engine asks for, "
                         "Backend.scan_chunk: all at once for the gpu engine's continuous decoding, else 4,096).")
    ap.add_argument("--ref-chunk", type=int, default=256,
                    help="Windows per generate call of the reference engine (its phase stops within one chunk "
                         "of its budget).")
    ap.add_argument("--skip-reference", action="store_true", help="Only the gpu engine.")
    ap.add_argument("--reference-twice", type=int, default=0, metavar="MAX_BATCH",
                    help="Run the reference engine a second time with this max_batch (other batch shapes, same "
                         "weights): its agreement with itself is the dtype's noise floor for answers_identical.")
    ap.add_argument("--dtype", choices=models.DTYPES, default=None,
                    help="Both engines' compute dtype (sets LORALINT_DTYPE; default: bf16 on CUDA, fp32 on CPU).")
    ap.add_argument("--compare-decode", action="store_true",
                    help="Also the gpu engine decoding batch by batch (LORALINT_GPU_DECODE=batches), same files.")
    ap.add_argument("--constrained", action="store_true",
                    help="--compare-engines: decode under each window's answer grammar (the scan's default), both "
                         "engines; windows the grammar answers alone never reach an engine")
    ap.add_argument("--phase-budget", type=float, default=330.0, help="Seconds at most for one engine's phase.")
    ap.add_argument("--total-budget", type=float, default=560.0,
                    help="Seconds after which the JSON is written with what has finished, and the run stops.")
    a = ap.parse_args(argv)
    if a.dtype:
        os.environ["LORALINT_DTYPE"] = a.dtype
    if a.compare_engines:
        return compare_engines(a)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or models.default_device()
    gpu = device.startswith("cuda")
    n_files = a.files or (2000 if gpu else 8)
    n_server = a.server_files or (400 if gpu else 6)
    paths = corpus_files(Path(a.corpus), a.packages, max(n_files, n_server))
    dtype = models.default_dtype(device)

    from loralint.backends import shipped_adapter_dir

    if not a.adapter and not a.forced and not a.no_force and (shipped_adapter_dir() / "loralint.json").exists():
        a.adapter = str(shipped_adapter_dir())
    t0 = time.perf_counter()
    if a.adapter:
        engine = TransformersBackend(resolve_adapter(a.adapter), base=None if a.base == models.EMBEDDED else a.base,
                                     device=device, engine=a.engine, batch_tokens=a.batch_tokens,
                                     max_batch=a.max_batch)
        what = f"adapter {a.adapter}"
    elif a.no_force:
        engine = TransformersBackend(None, base=a.base, device=device, engine=a.engine, batch_tokens=a.batch_tokens,
                                     max_batch=a.max_batch, model=random_weight_model(a.base, device, dtype))
        what = f"{Path(a.base).name} (random weights), every answer to its token limit"
    else:
        model = random_weight_model(a.base, device, dtype) if a.random_weights else None
        engine = ForcedAnswers(None, base=a.base, device=device, engine=a.engine if a.engine != "continuous" else None,
                               batch_tokens=a.batch_tokens,
                               max_batch=a.max_batch, model=model)
        engine.answer_tokens = a.answer_tokens
        what = (f"{Path(a.base).name}{' (random weights)' if a.random_weights else ''}, answers forced to the "
                f"oracle's" + (f", padded to {a.answer_tokens} tokens" if a.answer_tokens else ""))
    load_s = time.perf_counter() - t0
    print(f"model: {what} on {device} ({dtype}), loaded in {load_s:.1f}s; batch budget {engine.batch_tokens} "
          f"tokens, at most {engine.max_batch} prompts", file=sys.stderr)

    if isinstance(engine, ForcedAnswers):
        t1 = time.perf_counter()
        engine.prepare(paths[:max(n_files, n_server)])
        print(f"oracle answers for {len(engine.answers)} windows in {time.perf_counter() - t1:.1f}s (not timed)",
              file=sys.stderr)
    rows: list[dict] = []
    if not a.skip_inproc:
        # a short warm-up (kernels, allocator) so the timed run measures the steady state
        scan(paths[:2], backend=engine, cache=False)
        rows.append(measure("in process (transformers)", paths[:n_files], backend=engine))
    server: dict = {}
    if not a.skip_server:
        sub = paths[:n_server]
        srv = BatchingServer(engine, max_batch=max(a.concurrency, 1), wait_ms=a.wait_ms)
        with srv as url:
            seq = measure("server, sequential client (1 in flight)", sub, api=url, concurrency=1, timeout=3600)
            n_seq = len(srv.batches)
            conc = measure(f"server, concurrent client ({a.concurrency} in flight)", sub, api=url,
                           concurrency=a.concurrency, timeout=3600)
        sizes = srv.batches[n_seq:]
        rows += [seq, conc]
        server = {"ratio_concurrent_vs_sequential": round(seq["seconds"] / conc["seconds"], 2),
                  "same_findings": seq["_keys"] == conc["_keys"],
                  "server_batches": "dynamic (wait %.0f ms, max %d)" % (a.wait_ms, a.concurrency),
                  "concurrent_mean_batch": round(sum(sizes) / len(sizes), 1) if sizes else None}
    if not a.skip_server and not a.skip_llamacpp_server:
        try:
            lrows, lserver = llamacpp_server_rows(paths[:a.llamacpp_files], a.concurrency, a.threads)
            rows += lrows
            server["llamacpp"] = lserver
        except ImportError as e:
            print(f"no llama.cpp server row: {e}", file=sys.stderr)
    if a.llamacpp_gguf:
        try:
            import llama_cpp  # noqa: F401

            from loralint.backends.llamacpp import LlamaCppBackend

            lc = LlamaCppBackend(gguf=a.llamacpp_gguf, n_gpu_layers=-1 if gpu else 0)
            rows.append(measure("in process (llama-cpp-python)", paths[:n_server], backend=lc))
        except ImportError:
            print("llama_cpp is not importable: no llama.cpp row", file=sys.stderr)

    cols = ("run", "files", "windows", "seconds", "files/min", "windows/min", "tokens/s", "findings", "unverified",
            "errors")
    cells = [[r["label"], str(r["files"]), str(r["windows"]), f"{r['seconds']:.1f}", f"{r['files_per_min']:.0f}",
              f"{r['windows_per_min']:.0f}", str(r["tokens_per_s"] or "-"), str(r["findings"]), str(r["unverified"]),
              str(r["errors"])] for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"loralint scan speed: {what}, {device}")
        for col in cols:
            t.add_column(col, justify="left" if col == "run" else "right")
        for c in cells:
            t.add_row(*c)
        Console(width=160).print(t)
    except ImportError:  # a bare GPU machine
        print(" | ".join(cols))
        for c in cells:
            print(" | ".join(c))
    if server.get("ratio_concurrent_vs_sequential"):
        print(f"concurrent vs sequential client on the same (batching) server: "
              f"{server['ratio_concurrent_vs_sequential']}x (same findings: {server['same_findings']}; "
              f"{server['concurrent_mean_batch']} requests a batch on average)")
    if server.get("llamacpp"):
        print(f"llama.cpp server, concurrent vs sequential: {server['llamacpp']['ratio_concurrent_vs_sequential']}x")
    info = {
        "benchmark": "scan_speed", "model": what, "device": device, "dtype": str(dtype),
        "gpu": torch.cuda.get_device_name() if gpu else None, "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "load_seconds": round(load_s, 1),
        "batch_tokens": engine.batch_tokens, "max_batch": engine.max_batch, "engine": a.engine,
        "answer_tokens": a.answer_tokens, "wait_ms": a.wait_ms, "concurrency": a.concurrency,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "server": server,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"scan_speed_{'gpu' if gpu else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
