"""backends: the OpenAI client against a real loopback server, adapters, limits, the transformers engine."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from loralint.backends import (AdapterNotFound, BackendError, BackendUnavailable, Completion, FunctionBackend,
                               create_backend, max_new_tokens_for, resolve_adapter)
from loralint.backends.openai import OpenAIBackend
from loralint.scanner import scan
from tiny_scan import StubServer, oracle_answer, trained_fixture

MSG = [{"role": "user", "content": "Review this code ...\n```js\n1| if (a && b) {}\n```"}]


def test_openai_answers_in_order_with_bounded_concurrency():
    def reply(body):
        time.sleep(0.05)
        return f"answer {body['messages'][0]['content']}"

    with StubServer(reply) as url:
        b = OpenAIBackend(url, concurrency=3)
        prompts = [[{"role": "user", "content": str(i)}] for i in range(12)]
        out = b.generate(prompts, [7] * 12)
        assert [o.text for o in out] == [f"answer {i}" for i in range(12)]
        assert b.model == "stub-model" and b.identity()["model"] == "stub-model"
    # max_in_flight is read from the server object after the with-block
    b.close()


def test_openai_concurrency_is_bounded_and_used():
    stub = StubServer(lambda body: time.sleep(0.1) or "No violations found.")
    with stub as url:
        b = OpenAIBackend(url, concurrency=4)
        b.generate([MSG] * 16, 16)
    assert stub.max_in_flight == 4
    req = stub.requests[0]
    assert req["temperature"] == 0 and req["max_tokens"] == 16 and req["model"] == "stub-model"


def test_openai_length_finish_is_truncated():
    with StubServer(lambda body: ("1: if: a &", "length")) as url:
        (out,) = OpenAIBackend(url).generate([MSG], 4)
    assert isinstance(out, Completion) and out.truncated


def test_openai_timeout_becomes_an_error_and_the_rest_goes_on():
    def reply(body):
        if "slow" in body["messages"][0]["content"]:
            time.sleep(1.5)
        return "No violations found."

    with StubServer(reply) as url:
        b = OpenAIBackend(url, timeout=0.3, retries=1, concurrency=2)
        t = time.perf_counter()
        out = b.generate([[{"role": "user", "content": "slow"}], MSG], 8)
        assert time.perf_counter() - t < 1.5
    assert isinstance(out[0], BackendError) and "within 0.3s" in out[0].message and "2 attempts" in out[0].message
    assert out[1].text == "No violations found."


@pytest.mark.parametrize("raw", [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": 3}}]}'])
def test_openai_garbage_is_an_error(raw):
    with StubServer(lambda body: (200, raw)) as url:
        (out,) = OpenAIBackend(url, retries=0).generate([MSG], 8)
    assert isinstance(out, BackendError) and "reply" in out.message


def test_openai_retries_server_errors():
    count = {"n": 0}
    lock = threading.Lock()

    def reply(body):
        with lock:
            count["n"] += 1
            first = count["n"] == 1
        return (503, b'{"error": "busy"}') if first else "No violations found."

    with StubServer(reply) as url:
        (out,) = OpenAIBackend(url, retries=2).generate([MSG], 8)
    assert out.text == "No violations found." and count["n"] == 2


def test_openai_client_errors_are_not_retried():
    with StubServer(lambda body: (400, b'{"error": "bad model"}')) as url:
        (out,) = OpenAIBackend(url, retries=3).generate([MSG], 8)
    assert isinstance(out, BackendError) and "HTTP 400" in out.message


def test_openai_unreachable_server_fails_early_with_a_hint():
    with StubServer(lambda body: "") as url:
        pass  # started and stopped: nothing listens on that port now
    with pytest.raises(BackendUnavailable, match="cannot reach .*serve"):
        OpenAIBackend(url)


def test_scan_through_the_server_with_per_file_errors(tmp_path):
    for name, code in (("a.js", "if (a && b) {}\n"), ("b.js", "// junk\nif (c || d) {}\n"), ("c.js", "x()\n")):
        (tmp_path / name).write_text(code)

    def reply(body):
        code = body["messages"][-1]["content"]
        if "junk" in code:
            return (200, b"{{{{")
        return oracle_answer(body["messages"])

    with StubServer(reply) as url:
        res = scan([str(tmp_path)], api=url, cache=False, retries=0)
    assert [f.line for f in res.findings] == [1]
    assert [r.path.endswith("b.js") for r in res.errors] == [True]
    assert res.backend == "openai"


def test_function_backend_turns_exceptions_into_errors():
    def boom(m, n):
        raise RuntimeError("nope")

    (out,) = FunctionBackend(boom).generate([MSG], 8)
    assert isinstance(out, BackendError) and "nope" in str(out)


def test_max_new_tokens_never_cuts_a_real_answer():
    from loralint.rules import get_rule
    from loralint.checker import check

    assert max_new_tokens_for(["x = 1", "y()"]) == 32
    lines = ["if (aaaa && bbbb || cccc.dddd(eeee) && !ffff[gggg]) {",
             "  const q = r && s ? t : (u || v)",
             "  while (w.length > 0 &&", "         x < LIMIT) {}", "}"]
    rule = get_rule("predicate")
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.js")
        open(p, "w").write("\n".join(lines))
        answer = rule.render_answer(check([p]).findings)
    from tiny import smollm2_tokenizer

    tok = smollm2_tokenizer()
    assert len(tok(answer)["input_ids"]) + 1 < max_new_tokens_for(lines)


def test_shipped_adapter_resolves_when_present():
    from loralint.backends import shipped_adapter_dir

    if not (shipped_adapter_dir() / "loralint.json").exists():
        pytest.skip("no adapter is shipped in this tree")
    ad = resolve_adapter(None)
    assert ad.is_peft and ad.base and ad.rule == "predicate" and len(ad.digest) == 16


def test_adapters_resolve_with_clear_errors(tmp_path, monkeypatch):
    import loralint.backends

    monkeypatch.setattr(loralint.backends, "shipped_adapter_dir", lambda rule="predicate": tmp_path / "none")
    with pytest.raises(AdapterNotFound, match="--adapter"):
        resolve_adapter(None, "predicate")
    with pytest.raises(AdapterNotFound, match="no adapter at"):
        resolve_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFound, match="adapter_config.json"):
        resolve_adapter(tmp_path / "empty")
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "hub/model"}))
    (ad / "adapter_model.safetensors").write_bytes(b"weights")
    (ad / "loralint.json").write_text(json.dumps({"base": {"spec": "smollm2-135m"}, "rule": {"id": "predicate"}}))
    a = resolve_adapter(ad)
    assert (a.base, a.rule, a.is_peft) == ("smollm2-135m", "predicate", True)
    (ad / "README.md").write_text("card")  # the model card does not change the answers
    assert resolve_adapter(ad).digest == a.digest
    (ad / "adapter_model.safetensors").write_bytes(b"other weights")
    assert resolve_adapter(ad).digest != a.digest
    assert resolve_adapter(ad, base="other").base == "other"


def test_llamacpp_absent_or_without_gguf_says_what_to_do(tmp_path):
    try:
        import llama_cpp  # noqa: F401

        have = True
    except ImportError:
        have = False
    with pytest.raises(BackendUnavailable, match="llama-cpp-python" if not have else "GGUF"):
        create_backend("llamacpp", gguf=str(tmp_path / "none.gguf"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend("vllm", api="http://x")


@pytest.mark.slow
def test_transformers_batches_answer_like_single_prompts():
    """Left padding, length sorting and token-budget batches give the same greedy answers as one at a time."""
    from loralint.backends.transformers import TransformersBackend
    from loralint.rules import get_rule
    from loralint.windows import file_windows, window_messages

    adapter, fixture = trained_fixture()
    lines, wins = file_windows(fixture.read_bytes(), "javascript", target=15)
    prompts = [window_messages(get_rule("predicate"), lines, w, "js") for w in wins]
    caps = [max_new_tokens_for(lines[w.start:w.end]) for w in wins]
    ad = resolve_adapter(str(adapter))
    batched = TransformersBackend(ad, device="cpu", batch_tokens=100_000)
    batched.min_fill = 0.0  # one batch of all three (they end at different steps: rows are dropped)
    assert len(batched._batches(list(range(len(prompts))), [batched.encode(p) for p in prompts], caps)) == 1
    together = batched.generate(prompts, caps)
    single = TransformersBackend(ad, device="cpu", max_batch=1, model=batched.model, tokenizer=batched.tok)
    alone = single.generate(prompts, caps)
    hf = TransformersBackend(ad, device="cpu", engine="generate", model=batched.model, tokenizer=batched.tok)
    hf.min_fill = 0.0
    via_generate = hf.generate(prompts, caps)
    assert [o.text for o in together] == [o.text for o in alone] == [o.text for o in via_generate]
    assert len({o.tokens for o in together}) == 3
    assert all(isinstance(o, Completion) and not o.truncated for o in together)
    assert together[0].text.startswith("6: if: order && order.items.length > 0")
    # a limit below the answer's length: cut, and flagged as such
    (cut,) = single.generate(prompts[:1], 5)
    assert cut.truncated and cut.tokens == 5


@pytest.mark.slow
def test_llamacpp_gives_the_transformers_findings(tmp_path):
    """The same model as a GGUF through llama.cpp: the same findings (prompts tokenized by the HF tokenizer)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama-cpp-python is not installed ({e})")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralint.gguf_export import model_to_gguf

    adapter, fixture = trained_fixture()
    base = resolve_adapter(str(adapter)).base
    merged = tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    gguf = model_to_gguf(merged, tmp_path / "merged.gguf", "f32").path
    via_llama = scan([str(fixture)], backend="llamacpp", gguf=str(gguf), base=str(merged), window_lines=15,
                     cache=False)
    via_hf = scan([str(fixture)], adapter=str(adapter), window_lines=15, cache=False, device="cpu")
    assert [f.to_dict() for f in via_llama.findings] == [f.to_dict() for f in via_hf.findings]
    assert len(via_hf.findings) == 5 and via_llama.backend == "llamacpp"


# ------------------------------------------------------------------------------------ API keys (#11)
class _HeaderServer:
    """A loopback OpenAI-compatible server that records each request's Authorization header."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        self.auth: list[str | None] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            def _send(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                srv.auth.append(self.headers.get("Authorization"))
                self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):  # noqa: N802
                srv.auth.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content":
                           "No violations found."}, "finish_reason": "stop"}], "usage": {"completion_tokens": 3}})

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_api_key_is_sent_only_when_given_for_loralint(tmp_path, monkeypatch, capsys):
    from loralint.backends.openai import OpenAIBackend
    from loralint.cli import main

    srv = _HeaderServer()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
        monkeypatch.delenv("LORALINT_API_KEY", raising=False)
        b = OpenAIBackend(srv.url)
        b.generate([[{"role": "user", "content": "x"}]], [8])
        assert srv.auth and set(srv.auth) == {None}  # OPENAI_API_KEY is not read
        srv.auth.clear()
        OpenAIBackend(srv.url, api_key="k1")
        monkeypatch.setenv("LORALINT_API_KEY", "k2")
        OpenAIBackend(srv.url)
        assert srv.auth == ["Bearer k1", "Bearer k2"]
        monkeypatch.delenv("LORALINT_API_KEY")
        srv.auth.clear()
        (tmp_path / "a.js").write_text("let a = 1;\n")
        assert main(["scan", str(tmp_path / "a.js"), "--api", srv.url, "--api-key", "k3", "--no-cache", "-q"]) == 0
        assert srv.auth and set(srv.auth) == {"Bearer k3"}
        assert capsys.readouterr().err == ""  # loopback: no warning
    finally:
        srv.close()
        os.environ.pop("LORALINT_API_KEY", None)  # set by --api-key for the process


def test_a_key_over_plain_http_to_another_host_is_warned_about(capsys, monkeypatch):
    from loralint.backends.openai import OpenAIBackend

    monkeypatch.delenv("LORALINT_API_KEY", raising=False)
    for api, key, warned in (("http://10.1.2.3:8080", "k", True), ("http://gpu-box.internal", "k", True),
                             ("https://10.1.2.3", "k", False), ("http://localhost:8080", "k", False),
                             ("http://[::1]:8080", "k", False), ("http://10.1.2.3:8080", None, False)):
        b = OpenAIBackend(api, api_key=key, probe=False)
        err = capsys.readouterr().err
        assert bool(b.warnings) == warned and ("sent in clear text over http" in err) == warned, api
