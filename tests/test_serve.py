"""`loralint serve`: one base GGUF and two LoRA adapters behind the OpenAI API on a free loopback port.
Each model name must answer what transformers answers for base+that adapter; unknown names, oversized and
malformed requests, and a full queue get clear errors."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from tiny_export import MESSAGES, hf_greedy, kit, need_llama_cpp, prompt_ids

MAX_TOKENS = 12


# ------------------------------------------------------------------ request parsing (no engine needed)


def test_parse_chat_request():
    from loralint.serve import APIError, parse_chat_request

    model, msgs, p = parse_chat_request({"model": "predicate", "messages": MESSAGES, "temperature": 0.1,
                                         "max_tokens": 50, "stop": "\n\n", "min_tokens": 3})
    assert model == "predicate" and msgs == MESSAGES
    assert p == {"temperature": 0.1, "top_p": 1.0, "max_tokens": 50, "stop": ["\n\n"], "seed": None, "min_tokens": 3,
                 "chat_template_kwargs": None}
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert parse_chat_request({"model": "m", "messages": parts})[1][0]["content"] == "ab"
    assert parse_chat_request({"model": "m", "messages": MESSAGES, "max_completion_tokens": 7})[2]["max_tokens"] == 7
    for bad, param in [({"messages": MESSAGES}, "model"), ({"model": "m"}, "messages"),
                       ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
                       ({"model": "m", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
                       ({"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
                       ({"model": "m", "messages": MESSAGES, "n": 2}, "n"),
                       ({"model": "m", "messages": [{"content": "x"}]}, "messages")]:
        with pytest.raises(APIError) as e:
            parse_chat_request(bad)
        assert e.value.status == 400 and e.value.param == param


def test_vllm_command(tmp_path_factory, capsys):
    """The documented GPU path: the same names (base + one LoRA module a rule) through vLLM."""
    from loralint.cli import main

    k = kit(tmp_path_factory, "llama")
    rc = main(["serve", "--engine", "vllm", "--print-command", "--adapter", f"predicate={k['predicate']}",
               "--adapter", f"naming={k['naming']}", "--port", "8000"])
    out = capsys.readouterr().out.split()
    assert rc == 0 and out[:3] == ["vllm", "serve", str(k["base"].resolve())]
    assert "--enable-lora" in out and out[out.index("--served-model-name") + 1] == "base"
    assert f"predicate={k['predicate'].resolve()}" in out and f"naming={k['naming'].resolve()}" in out
    assert out[out.index("--max-lora-rank") + 1] == "8"


# ------------------------------------------------------------------ a live server


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    need_llama_cpp()
    from loralint import serve

    k = kit(tmp_path_factory, "llama")
    # the adapters as their owners would hand them over: a PEFT folder (converted and cached on start) and a
    # ready GGUF LoRA
    p = serve.plan(None, [f"predicate={k['predicate']}", f"naming={k['lora_naming']}"], [],
                   cache=tmp_path_factory.mktemp("serve-cache"))
    assert p.base_gguf is not None and [a.name for a in p.adapters] == ["predicate", "naming"]
    engine = serve.Engine(k["base_f32"], {a.name: a.gguf for a in p.adapters}, n_ctx=512, n_threads=1,
                          tokenizer=p.tokenizer(), templates={a.name: a.chat_template for a in p.adapters})
    engine.warmup()
    server = serve.make_server(engine, "127.0.0.1", 0, max_body=16_384, max_queue=2)
    serve.serve_in_thread(server)
    yield {"k": k, "server": server, "engine": engine, "port": server.server_address[1], "plan": p}
    server.shutdown()
    server.server_close()
    engine.close()


def _call(port, method, path, body=None, raw=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null"), r.headers  # (header names are case-insensitive)
    c.close()
    return out


def _chat(port, model, **kw):
    return _call(port, "POST", "/v1/chat/completions",
                 {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, **kw})


def _expected_text(base, adapter=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = hf_greedy(model.eval(), prompt_ids(tok), MAX_TOKENS, eos=tok.eos_token_id)
    return tok.decode(ids, skip_special_tokens=True)


def test_models_and_health(live):
    status, body, _ = _call(live["port"], "GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [(m["id"], m["parent"]) for m in body["data"]] == [("base", None), ("predicate", "base"), ("naming", "base")]
    status, body, _ = _call(live["port"], "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["models"] == ["base", "predicate", "naming"]


def test_each_model_answers_like_transformers(live):
    k = live["k"]
    want = {"predicate": _expected_text(k["base"], k["predicate"]), "naming": _expected_text(k["base"], k["naming"]),
            "base": _expected_text(k["base"])}
    assert len(set(want.values())) == 3  # three different models
    # interleaved, so every request switches adapters (and must not reuse the other adapter's KV cache)
    for model in ["predicate", "base", "naming", "predicate", "naming", "base"]:
        status, body, _ = _chat(live["port"], model)
        assert status == 200, body
        assert body["object"] == "chat.completion" and body["model"] == model
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == want[model], model
        assert choice["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] <= MAX_TOKENS and body["usage"]["prompt_tokens"] > 10


def test_prompt_is_the_chat_template_as_transformers_renders_it(live):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(live["k"]["base"])
    convs = [MESSAGES, [{"role": "system", "content": "Be brief."}, *MESSAGES,
                        {"role": "assistant", "content": "No violations found."}, {"role": "user", "content": "Sure?"}]]
    for msgs in convs:
        assert live["engine"].render(msgs, {"enable_thinking": False}) == \
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False)


def test_prompts_are_tokenized_as_in_training(live):
    """llama.cpp's own tokenizer splits SmolLM2's " \n" before a non-space differently from the Hugging Face
    tokenizer (one token " \n" instead of " " + "\n": every numbered window with an empty line); the server
    tokenizes prompts with the base's Hugging Face tokenizer, as training and the transformers backend do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(live["k"]["base"])
    text = "1| const a = 1;\n2| \n3| if (a && b) {}\n"
    assert live["engine"].encode(text) == tok.encode(text)
    llama_own = live["engine"].llm.tokenize(text.encode(), add_bos=False, special=True)
    print("llama.cpp's tokenizer agrees:", llama_own == tok.encode(text))


def test_adapter_chat_template_is_used(tmp_path_factory):
    """An adapter folder with its own template (LlamaFactory saves the one it trained with) is served with it."""
    from loralint import serve

    k = kit(tmp_path_factory, "llama")
    eng = serve.Engine(k["base_f32"], {"naming": k["lora_naming"]}, n_ctx=256, n_threads=1,
                       templates={"naming": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}>"})
    try:
        assert eng.render(MESSAGES, model="naming") == f"[{MESSAGES[0]['content']}]>"
        assert eng.render(MESSAGES, model="base").startswith("<|im_start|>system")
    finally:
        eng.close()


def test_stop_and_max_tokens(live):
    status, body, _ = _chat(live["port"], "predicate", max_tokens=3)
    assert status == 200 and body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    full = _chat(live["port"], "predicate")[1]["choices"][0]["message"]["content"]
    cut = full[2:6]
    status, body, _ = _chat(live["port"], "predicate", stop=[cut])
    assert status == 200 and body["choices"][0]["message"]["content"] == full[: full.index(cut)]


def test_errors_are_clear(live):
    port = live["port"]
    status, body, _ = _chat(port, "nosuchrule")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert "nosuchrule" in body["error"]["message"] and "predicate" in body["error"]["message"]
    big = json.dumps({"model": "predicate", "messages": [{"role": "user", "content": "x" * 20_000}]}).encode()
    status, body, _ = _call(port, "POST", "/v1/chat/completions", raw=big)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body, _ = _call(port, "POST", "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body, _ = _call(port, "GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = _chat(port, "predicate", messages=[{"role": "user", "content": "word " * 600}])
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert _chat(port, "base")[0] == 200  # still serving


def test_full_queue_gets_503(live):
    """max_queue=2: while two requests hold the slots, the next is turned away at once with Retry-After."""
    port, engine, server = live["port"], live["engine"], live["server"]
    results = []
    with engine.lock:  # the engine is busy: two requests take the two slots and wait
        threads = [threading.Thread(target=lambda: results.append(_chat(port, "predicate"))) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while server.stats["in_flight"] < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert server.stats["in_flight"] == 2
        status, body, headers = _chat(port, "predicate")
        assert status == 503 and body["error"]["code"] == "server_busy" and headers.get("Retry-After") == "1"
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [200, 200] and server.stats["in_flight"] == 0


def test_scan_client_speaks_to_it(live):
    """The scanner's OpenAI client (backends/openai.py) against this server, model = the rule id."""
    openai = pytest.importorskip("loralint.backends.openai")
    want = _chat(live["port"], "predicate")[1]["choices"][0]["message"]["content"]
    client = openai.OpenAIBackend(f"http://127.0.0.1:{live['port']}", model="predicate", concurrency=2)
    try:
        res = client.generate([MESSAGES, MESSAGES], MAX_TOKENS)
    finally:
        client.close()
    assert [r.text for r in res] == [want, want]


def test_stream_sends_openai_chunks(live):
    """stream: true -> server-sent events of chat.completion.chunk objects, as OpenAI sends them: the role, the
    content in pieces that add up to the non-streamed answer, the finish reason, a usage chunk when asked for,
    then [DONE]."""
    port = live["port"]
    want = _chat(port, "predicate")[1]["choices"][0]
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "predicate", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
         "stream_options": {"include_usage": True}}), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in r.read().decode().split("\n\n") if e]
    c.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" and ch["model"] == "predicate" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == \
        want["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == want["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------ hostile clients (issue #11)

LONG = 1900  # tokens: seconds of generation on the tiny model at n_ctx 2048 (a whole one takes > 10 s here)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A base-only engine with a 2048-token context (long generations to abandon) behind three servers: one
    with small limits, one with a 1 s deadline, one with an API key."""
    need_llama_cpp()
    from loralint import serve

    k = kit(tmp_path_factory, "llama")
    engine = serve.Engine(k["base_f32"], {}, n_ctx=2048, n_threads=1)
    engine.warmup()
    servers = {
        "plain": serve.make_server(engine, "127.0.0.1", 0, max_queue=2, default_max_tokens=16,
                                   max_tokens_limit=LONG, request_timeout=None),
        "deadline": serve.make_server(engine, "127.0.0.1", 0, max_queue=2, max_tokens_limit=LONG,
                                      request_timeout=1.0),
        "key": serve.make_server(engine, "127.0.0.1", 0, api_key="sesame"),
    }
    for s in servers.values():
        serve.serve_in_thread(s)
    yield {"engine": engine, **{n: (s, s.server_address[1]) for n, s in servers.items()}}
    for s in servers.values():
        s.shutdown()
        s.server_close()
    engine.close()


def _long(**kw):
    return {"model": "base", "messages": MESSAGES, "max_tokens": LONG, "min_tokens": LONG, **kw}


def _send_raw(port, body: dict, path="/v1/chat/completions"):
    """A request sent on a bare socket that is then never read: the caller abandons it by closing the socket."""
    import socket

    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _wait(cond, timeout=10.0):
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.02)
    return cond()


def test_abandoned_queued_requests_free_their_places(hostile):
    """The attack: fill the queue with requests and hang up. Before, they held their places (every other client
    got 503) until the engine had answered each one; now each leaves the queue when its client goes."""
    server, port = hostile["plain"]
    engine = hostile["engine"]
    before = dict(server.stats)
    with engine.lock:  # the engine is busy with something else
        socks = [_send_raw(port, _long()) for _ in range(2)]
        assert _wait(lambda: server.stats["in_flight"] == 2)
        assert _call(port, "POST", "/v1/chat/completions", _long())[0] == 503  # full
        for s in socks:
            s.close()
        t = time.time()
        assert _wait(lambda: server.stats["in_flight"] == 0, 5), "abandoned requests kept their places"
        print(f"places freed {time.time() - t:.2f}s after the clients hung up")
    assert server.stats["cancelled"] - before["cancelled"] == 2
    assert server.stats["generated_tokens"] == before["generated_tokens"]  # they never ran
    status, body, _ = _call(port, "POST", "/v1/chat/completions", {"model": "base", "messages": MESSAGES})
    assert status == 200


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_stops_generation(hostile, stream):
    """A client that hangs up mid-answer stops the generation at the next token (it used to run to the end)."""
    server, port = hostile["plain"]
    before = dict(server.stats)
    s = _send_raw(port, _long(stream=stream))
    if stream:
        assert s.recv(1 << 16).startswith(b"HTTP/1.1 200")  # the stream has begun
    assert _wait(lambda: server.stats["in_flight"] == 1 and any(j.tokens > 0 for j in server.state.jobs))
    t = time.time()
    s.close()
    assert _wait(lambda: server.stats["in_flight"] == 0, 5), "generation went on for a client that was gone"
    spent = server.stats["generated_tokens"] - before["generated_tokens"]
    print(f"stopped {time.time() - t:.2f}s after the hang-up, {spent} of {LONG} tokens generated")
    assert 0 < spent < LONG and server.stats["cancelled"] == before["cancelled"] + 1


def test_max_tokens_default_and_limit(hostile):
    """No max_tokens used to mean 'up to the context window' (4,066 tokens, 201 s); now a default applies and
    a request for more than the limit is turned down."""
    server, port = hostile["plain"]
    status, body, _ = _call(port, "POST", "/v1/chat/completions",
                            {"model": "base", "messages": MESSAGES, "min_tokens": 100})
    assert status == 200 and body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"
    status, body, _ = _call(port, "POST", "/v1/chat/completions", _long(max_tokens=LONG + 1))
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_deadline(hostile):
    """Every request has a deadline: a long answer is cut there (finish_reason "length"), and a request still
    waiting for the engine at its deadline gets 503."""
    server, port = hostile["deadline"]
    t = time.time()
    status, body, _ = _call(port, "POST", "/v1/chat/completions", _long())
    took = time.time() - t
    assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
    assert 0 < body["usage"]["completion_tokens"] < LONG and took < 5, took
    with hostile["engine"].lock:
        t = time.time()
        status, body, headers = _call(port, "POST", "/v1/chat/completions", _long())
        assert status == 503 and body["error"]["code"] == "server_busy" and headers["Retry-After"] == "1"
        assert 0.9 < time.time() - t < 5
    assert server.stats["timed_out"] == 2 and server.stats["in_flight"] == 0


def test_hostile_bodies_get_400(hostile):
    """NaN sampling parameters (were 200 with garbage), 100k-deep JSON, a non-string content part and a lone
    surrogate (were 500) are each a 400 naming the fault; the server goes on serving."""
    server, port = hostile["plain"]
    ok = {"model": "base", "messages": MESSAGES, "max_tokens": 2}
    msg = lambda content: {**ok, "messages": [{"role": "user", "content": content}]}  # noqa: E731
    cases = {
        "NaN temperature": json.dumps({**ok, "temperature": float("nan")}).encode(),
        "Infinity top_p": json.dumps({**ok, "top_p": float("inf")}).encode(),
        "100k-deep JSON": b'{"model": "base", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "non-string content part": json.dumps(msg([{"type": "text", "text": 5}])).encode(),
        "content part that is no object": json.dumps(msg([7])).encode(),
        "image content part": json.dumps(msg([{"type": "image_url", "image_url": {"url": "x"}}])).encode(),
        "lone surrogate": json.dumps(msg("a \ud800 b")).encode(),
        "lone surrogate in a stop string": json.dumps({**ok, "stop": ["\udc00"]}).encode(),
        "string temperature": json.dumps({**ok, "temperature": "0.5"}).encode(),
        "not an object": b"[1, 2]",
    }
    for name, raw in cases.items():
        status, body, _ = _call(port, "POST", "/v1/chat/completions", raw=raw)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", (name, status, body)
        print(f"{name}: {body['error']['message'][:100]}")
    assert server.stats["errors"] == 0
    assert _call(port, "POST", "/v1/chat/completions", ok)[0] == 200


def test_bad_content_length_closes_the_connection(hostile):
    """Content-Length: -1 used to let the bytes after the headers pass for a second request on the same
    connection; now the request is refused and the connection closed."""
    import socket

    _, port = hostile["plain"]
    smuggled = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    for length in ("-1", "1, 2", "0x10", "+5"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {length}\r\n\r\n{smuggled}".encode())
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        s.close()
        assert got.startswith(b"HTTP/1.1 400") and got.count(b"HTTP/1.1 ") == 1, (length, got[:300])


def test_host_origin_and_content_type(hostile):
    """A loopback server answers only loopback Host names (no DNS rebinding), refuses requests from web pages
    of another origin, and takes JSON bodies only (no cross-site form posts)."""
    _, port = hostile["plain"]
    body = {"model": "base", "messages": MESSAGES, "max_tokens": 2}
    status, err, _ = _call(port, "GET", "/v1/models", headers={"Host": "attacker.example"})
    assert status == 400 and err["error"]["code"] == "invalid_host"
    status, err, _ = _call(port, "POST", "/v1/chat/completions", body, headers={"Origin": "http://attacker.example"})
    assert status == 403 and err["error"]["code"] == "origin_not_allowed"
    status, err, _ = _call(port, "POST", "/v1/chat/completions", body, headers={"Content-Type": "text/plain"})
    assert status == 415
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert _call(port, "POST", "/v1/chat/completions", body,
                     headers={"Host": host, "Origin": f"http://{host}"})[0] == 200


def test_api_key(hostile):
    server, port = hostile["key"]
    body = {"model": "base", "messages": MESSAGES, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        status, err, h = _call(port, "POST", "/v1/chat/completions", body, headers=headers)
        assert status == 401 and err["error"]["code"] == "invalid_api_key" and h["WWW-Authenticate"] == "Bearer"
    assert _call(port, "GET", "/v1/models")[0] == 401
    assert _call(port, "GET", "/health")[0] == 200
    assert _call(port, "POST", "/v1/chat/completions", body, headers={"Authorization": "Bearer sesame"})[0] == 200
    openai = pytest.importorskip("loralint.backends.openai")
    client = openai.OpenAIBackend(f"http://127.0.0.1:{port}", api_key="sesame", concurrency=1)
    try:
        assert client.model == "base" and client.generate([MESSAGES], 2)[0].text is not None
    finally:
        client.close()


def test_public_host_needs_a_flag(capsys):
    from loralint.cli import main

    rc = main(["serve", "--host", "0.0.0.0", "--port", "0"])
    assert rc != 0 and "--allow-remote" in capsys.readouterr().err


def test_chunked_body_is_counted_against_the_limit(live):
    """A body sent without a Content-Length (chunked) is counted as it arrives: past --max-body it is a 413."""
    import socket

    port = live["port"]
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
              "Transfer-Encoding: chunked\r\n\r\n".encode())
    try:
        for _ in range(8):  # 8 x 4 KiB > 16 KiB
            s.sendall(b"1000\r\n" + b" " * 4096 + b"\r\n")
        s.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end: fine
    r = http.client.HTTPResponse(s)
    r.begin()
    status, body = r.status, json.loads(r.read())
    s.close()
    assert status == 413 and body["error"]["code"] == "request_too_large"
