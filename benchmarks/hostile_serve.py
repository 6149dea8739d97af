"""Hostile clients against `loralint serve`: each attack of issue #11 replayed on a real server on loopback
(llama.cpp, the embedded SmolLM2-135M GGUF, the CLI's default limits), with what the server did and how long
it took.

    python benchmarks/hostile_serve.py [--threads N] [--out benchmarks/results/hostile_serve.json]

For another benchmark: :func:`cases` returns ``(name, outcome, seconds)`` rows (outcome starts with "ok" when
the server did what it should, else "FAIL"); :func:`run` returns the same as dicts with ``passed``.

The attacks: 16 clients that queue long requests and hang up (before: every other client got 503 for about
two minutes); a request with no max_tokens (before: 4,066 tokens, 201 s); a client hanging up mid-answer,
streamed or not; a request that outlives its deadline; NaN / infinite sampling parameters (before: 200 with
garbage); 100k-deep JSON, a non-string content part, a lone surrogate (before: 500); ``Content-Length: -1``
followed by a second request on the same connection (before: the second went through); a foreign Host
(DNS rebinding), a foreign Origin (a web page), a text/plain body (a cross-site form), a missing API key;
and `loralint serve --host 0.0.0.0` without --allow-remote.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PROMPT = [{"role": "user", "content": "Count from 1 to 100000, one number a line. Do not stop."}]
LONG = 1500  # tokens a "long" request asks for (and, with min_tokens, gets unless stopped)


def _call(port, method, path, body=None, raw=None, headers=None, timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    raw_out = r.read()
    c.close()
    try:
        return r.status, json.loads(raw_out or b"null")
    except ValueError:
        return r.status, raw_out.decode(errors="replace")


def _send_raw(port, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _wait(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def _long(**kw):
    return {"model": "base", "messages": PROMPT, "max_tokens": LONG, "min_tokens": LONG, **kw}


def _status_case(port, raw: bytes, want: int, headers=None, method="POST", path="/v1/chat/completions"):
    status, body = _call(port, method, path, raw=raw, headers=headers)
    msg = body["error"]["message"] if isinstance(body, dict) and "error" in body else ""
    return status == want, f"HTTP {status}" + (f": {msg[:70]}" if msg else "")


def _attacks(servers: dict, engine):
    """(name, function returning (passed, observed)) for each attack."""
    plain, port = servers["plain"]
    dl_server, dl_port = servers["deadline"]
    _, key_port = servers["key"]
    ok = {"model": "base", "messages": PROMPT, "max_tokens": 2}

    def abandoned():
        socks = [_send_raw(port, _long()) for _ in range(plain.settings.max_queue)]
        if not _wait(lambda: plain.stats["in_flight"] == len(socks), 30):
            return False, f"only {plain.stats['in_flight']} queued"
        busy = _call(port, "POST", "/v1/chat/completions", ok)[0]
        for s in socks:
            s.close()
        t = time.monotonic()
        tries = 0
        while True:  # a new client, retrying while it gets 503 (before: for about two minutes)
            tries += 1
            status = _call(port, "POST", "/v1/chat/completions", ok)[0]
            if status != 503 or time.monotonic() - t > 180:
                break
            time.sleep(0.05)
        took = time.monotonic() - t
        return busy == 503 and status == 200 and took < 5, (
            f"{len(socks)} queued -> HTTP {busy} for the next; after the hang-up a new client was served "
            f"(HTTP {status}) {took:.2f} s later, on try {tries}")

    def no_max_tokens():
        status, body = _call(port, "POST", "/v1/chat/completions", {"model": "base", "messages": PROMPT,
                                                                     "min_tokens": 100_000})
        n = body["usage"]["completion_tokens"] if status == 200 else None
        return status == 200 and n <= plain.settings.default_max_tokens, \
            f"HTTP {status}, {n} tokens (default max_tokens {plain.settings.default_max_tokens})"

    def too_many_tokens():
        return _status_case(port, json.dumps(_long(max_tokens=10**9)).encode(), 400)

    def hang_up(stream: bool):
        def attack():
            before = plain.stats["generated_tokens"]
            s = _send_raw(port, _long(stream=stream))
            if not _wait(lambda: any(j.tokens > 0 for j in plain.state.jobs), 60):
                s.close()
                return False, "the request never started"
            s.close()
            t = time.monotonic()
            freed = _wait(lambda: plain.stats["in_flight"] == 0, 60)
            spent = plain.stats["generated_tokens"] - before
            return freed and spent < LONG, (f"generation stopped {time.monotonic() - t:.2f} s after the hang-up, "
                                            f"{spent} of {LONG} tokens")
        return attack

    def deadline():
        status, body = _call(dl_port, "POST", "/v1/chat/completions", _long())
        fin = body["choices"][0]["finish_reason"] if status == 200 else None
        n = body["usage"]["completion_tokens"] if status == 200 else None
        return status == 200 and fin == "length" and n < LONG, \
            f"HTTP {status}, finish_reason {fin}, {n} tokens (deadline {dl_server.settings.request_timeout:g} s)"

    def smuggle():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
                  f"\r\nContent-Length: -1\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        s.close()
        n = got.count(b"HTTP/1.1 ")
        return got.startswith(b"HTTP/1.1 400") and n == 1, \
            f"{n} response(s), first {got[:12].decode(errors='replace').strip()}, connection closed"

    def public_host():
        import contextlib
        import io

        from loralint.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["serve", "--host", "0.0.0.0", "--port", "0"])
        return rc != 0 and "--allow-remote" in err.getvalue(), f"exit {rc}: {err.getvalue().strip()[:80]}"

    msg = lambda content: json.dumps({**ok, "messages": [{"role": "user", "content": content}]}).encode()  # noqa: E731
    return [
        ("16 clients queue long requests and hang up", abandoned),
        ("no max_tokens (min_tokens 100000)", no_max_tokens),
        ("max_tokens 10^9", too_many_tokens),
        ("client hangs up mid-answer", hang_up(False)),
        ("client hangs up mid-stream", hang_up(True)),
        ("request outlives its deadline", deadline),
        ("NaN temperature", lambda: _status_case(port, json.dumps({**ok, "temperature": float("nan")}).encode(), 400)),
        ("Infinity top_p", lambda: _status_case(port, json.dumps({**ok, "top_p": float("inf")}).encode(), 400)),
        ("100k-deep JSON", lambda: _status_case(
            port, b'{"model": "base", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400)),
        ("non-string content part", lambda: _status_case(port, msg([{"type": "text", "text": 5}]), 400)),
        ("lone surrogate", lambda: _status_case(port, msg("a \ud800 b"), 400)),
        ("Content-Length: -1 + a second request", smuggle),
        ("foreign Host (DNS rebinding)", lambda: _status_case(port, None, 400, {"Host": "attacker.example"}, "GET",
                                                              "/v1/models")),
        ("foreign Origin (a web page)", lambda: _status_case(port, json.dumps(ok).encode(), 403,
                                                             {"Origin": "http://attacker.example"})),
        ("text/plain body (a cross-site form)", lambda: _status_case(port, json.dumps(ok).encode(), 415,
                                                                     {"Content-Type": "text/plain"})),
        ("no API key (--api-key set)", lambda: _status_case(key_port, json.dumps(ok).encode(), 401)),
        ("--host 0.0.0.0 without --allow-remote", public_host),
    ]


def run(threads: int | None = None, progress=lambda m: None) -> list[dict]:
    """Start the servers, replay every attack, stop them: one dict per attack."""
    from loralint import models, serve

    engine = serve.Engine(models.embedded_gguf(), n_ctx=2048, n_threads=threads or serve.default_threads())
    servers = {"plain": serve.make_server(engine, "127.0.0.1", 0),
               "deadline": serve.make_server(engine, "127.0.0.1", 0, request_timeout=2.0),
               "key": serve.make_server(engine, "127.0.0.1", 0, api_key="bench-key")}
    rows = []
    try:
        engine.warmup()
        for s in servers.values():
            serve.serve_in_thread(s)
        for name, attack in _attacks({n: (s, s.server_address[1]) for n, s in servers.items()}, engine):
            progress(name)
            t = time.monotonic()
            try:
                passed, observed = attack()
            except Exception as e:  # noqa: BLE001 - an attack that breaks the client is a result too
                passed, observed = False, f"{type(e).__name__}: {e}"
            rows.append({"attack": name, "passed": bool(passed), "outcome": observed,
                         "seconds": round(time.monotonic() - t, 3)})
            # the server must still answer a plain request after each attack
            alive = _call(servers["plain"].server_address[1], "GET", "/health")[0]
            if alive != 200:
                rows[-1]["passed"] = False
                rows[-1]["outcome"] += f"; /health then answered {alive}"
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()
        engine.close()
    return rows


def cases(threads: int | None = None) -> list[tuple[str, str, float]]:
    """``(name, outcome, seconds)`` per attack; outcome starts with "ok" or "FAIL"."""
    return [(r["attack"], ("ok: " if r["passed"] else "FAIL: ") + r["outcome"], r["seconds"])
            for r in run(threads)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: all cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_serve.json")
    args = ap.parse_args()
    rows = run(args.threads or None, progress=lambda m: print(f"attack: {m} ...", file=sys.stderr))
    w = max(len(r["attack"]) for r in rows)
    print(f"\n{'attack':<{w}}  {'result':<6}  {'seconds':>7}  outcome")
    for r in rows:
        print(f"{r['attack']:<{w}}  {'ok' if r['passed'] else 'FAIL':<6}  {r['seconds']:>7.2f}  {r['outcome']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "hostile_serve", "model": "smollm2-135m (embedded GGUF)",
                                    "attacks": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
