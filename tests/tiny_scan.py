"""Helpers for the scan tests.

- a tiny model that has *learned* the answers for a fixture file, so a scan finds real findings through
  the whole path (chat template, batched generation, PEFT adapter, answer parsing, verification);
- a stub OpenAI-compatible HTTP server on loopback (:class:`StubServer`);
- a scripted "perfect model" (:func:`oracle_answer`: the oracle run on the window's lines).

    adapter = memorizing_adapter(tmp_path, [fixture], window_lines=15)

The base is ``tiny.tiny_config``'s random 2-layer Qwen3 with the real SmolLM2 tokenizer, built here with
two changes from ``tiny.tiny_model_dir`` that make it learnable by an adapter alone: no ``pad_token_id`` in
its config (SmolLM2 pads with its end-of-turn token, and an embedding's padding row is zero and never
trained, so the tied output layer could never say "end of turn") and embeddings 10x larger than the
default init (a frozen, tiny output layer cannot make a confident prediction). A LoRA adapter on all linear
layers, with the norms trained too, learns the oracle's answer for each window, the loss on the answer
tokens only (``logits_to_keep``: the 49k-token vocabulary costs nothing for the prompt), until the
teacher-forced greedy answer is exact for every window with a margin: about 80 steps, ~15 s on one core.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import threading
from pathlib import Path

from tiny import tiny_model_dir

FIXTURE = Path(__file__).parent / "fixtures" / "scan" / "sample.js"


def tiny_base(tmp_path: Path, seed: int = 0) -> Path:
    """A random tiny Qwen3 (SmolLM2 tokenizer) that a LoRA adapter can teach to answer (see above)."""
    return tiny_model_dir(tmp_path, "qwen3", seed, name="tiny-base", pad_token_id=None, initializer_range=0.2)


def window_examples(tok, files: list[Path], window_lines: int,
                    rule_id: str = "predicate") -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + end of turn) for every window of ``files``, as the scanner will build them."""
    from loralint.checker import oracle_findings
    from loralint.languages import fence_for, grammar_for
    from loralint.rules import get_rule
    from loralint.sources import SourceFile
    from loralint.windows import file_windows, window_messages

    rule = get_rule(rule_id)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for path in files:
        data = Path(path).read_bytes()
        grammar = grammar_for(str(path))
        lines, wins = file_windows(data, grammar, target=window_lines)
        found, _ = oracle_findings(SourceFile(str(path), str(path), grammar, data), [rule])
        for w in wins:
            answer = rule.render_answer([f for f in found if w.start < f.line <= w.end])
            msgs = window_messages(rule, lines, w, fence_for(str(path)))
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            out.append((tok(text, add_special_tokens=False)["input_ids"],
                        tok(answer, add_special_tokens=False)["input_ids"] + [eos]))
    return out


def memorizing_adapter(tmp_path: Path, files: list[Path], window_lines: int = 15, max_steps: int = 400,
                       lr: float = 1e-2, seed: int = 0, rule: str = "predicate", name: str = "adapter") -> Path:
    """Train (once per ``tmp_path`` and ``name``) a LoRA adapter that answers every window of ``files`` like
    ``rule``'s oracle (adapters of one ``tmp_path`` share its tiny base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(tmp_path) / name
    if (out / "loralint.json").exists():
        return out
    base = tiny_base(tmp_path, seed)
    tok = AutoTokenizer.from_pretrained(base)
    examples = window_examples(tok, files, window_lines, rule)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is many times faster than two busy ones
    try:
        torch.manual_seed(seed)
        torch.set_grad_enabled(True)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 modules_to_save=["norm"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        batches = [(torch.tensor([p + a]), torch.tensor(a)) for p, a in examples]
        for step in range(max_steps):
            exact, total = True, 0.0
            for ids, target in batches:
                logits = model(input_ids=ids, logits_to_keep=len(target) + 1).logits[0, :-1]
                loss = torch.nn.functional.cross_entropy(logits, target)
                loss.backward()
                total += loss.item()
                exact &= bool((logits.argmax(-1) == target).all())
            opt.step()
            opt.zero_grad()
            if exact and total < 0.05 * len(batches):
                break
        else:
            raise AssertionError(f"the tiny model did not learn {len(batches)} answers in {max_steps} steps")
        model.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    (out / "loralint.json").write_text(json.dumps({
        "format": 1, "kind": "lora-adapter", "base": {"spec": str(base), "name": "tiny-qwen3", "kind": "dir"},
        "rule": {"id": rule}, "train": {"steps": step + 1}}, indent=1))
    return out


@functools.lru_cache(maxsize=None)
def trained_fixture(window_lines: int = 15) -> tuple[Path, Path]:
    """(adapter folder, fixture file): trained once per test session, shared by the test modules."""
    root = Path(tempfile.mkdtemp(prefix="loralint-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return memorizing_adapter(root, [FIXTURE], window_lines=window_lines), FIXTURE


# ------------------------------------------------------------------------------ a stub OpenAI-compatible server
class StubServer:
    """A real HTTP server on loopback (a thread) that answers ``/v1/chat/completions`` with ``reply(body)``.

    ``reply`` returns the answer text, ``(text, finish_reason)``, or ``(status, raw body bytes)`` to send as
    is, or raises (HTTP 500); it may sleep to make the client time out. ``max_in_flight`` records the most requests served at once.

        with StubServer(lambda body: "No violations found.") as url:
            ...
    """

    def __init__(self, reply, model: str | list[str] = "stub-model"):  # several: the served models' names
        self.reply = reply
        self.model = model
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = None

    def __enter__(self) -> str:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, raw: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    ids = stub.model if isinstance(stub.model, (list, tuple)) else [stub.model]
                    self._send(200, json.dumps({"object": "list", "data": [{"id": m} for m in ids]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.requests.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    out = stub.reply(body)
                except Exception as e:  # noqa: BLE001
                    out = (500, json.dumps({"error": str(e)}).encode())
                finally:
                    with stub._lock:
                        stub.in_flight -= 1
                if isinstance(out, tuple) and isinstance(out[0], int):
                    self._send(*out)
                    return
                text, finish = (out, "stop") if isinstance(out, str) else out
                self._send(200, json.dumps({
                    "id": "x", "object": "chat.completion", "model": body.get("model") or str(stub.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 4)}}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def prompt_code(messages: list[dict]) -> tuple[int, list[str]]:
    """(first line number, code lines) of a window prompt (lines are numbered ``N| code``)."""
    body = messages[-1]["content"]
    code = body.split("```", 1)[1].split("\n", 1)[1].rsplit("\n```", 1)[0]
    rows = [r.split("| ", 1) if "| " in r else r.rstrip("|").split("|", 1) for r in code.split("\n")]
    return int(rows[0][0]), [r[1] if len(r) > 1 else "" for r in rows]


def oracle_answer(messages: list[dict], max_new_tokens: int = 0, rule: str = "predicate") -> str:
    """What a perfect model would answer for a window prompt (the oracle of ``rule`` run on the window's lines)."""
    from loralint.checker import oracle_findings
    from loralint.rules import get_rule
    from loralint.sources import SourceFile

    rule = get_rule(rule)
    first, lines = prompt_code(messages)
    text = "\n" * (first - 1) + "\n".join(lines)
    found, _ = oracle_findings(SourceFile("w.js", "w.js", "javascript", text.encode()), [rule])
    return rule.render_answer(found)
