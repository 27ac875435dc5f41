"""The openai teacher against a real HTTP server speaking chat completions (on 127.0.0.1), through
the real ``openai`` client: retries on 429/500/timeouts/malformed bodies, nothing lost, the cache
makes a second run free; and the response cache itself."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.common.chat import ChatConfigError, ChatRequest, OpenAIChat, ResponseCache, complete_cached
from stages.common.data import DataFormatError
from stages.synth_lib.teachers import ChatTeacher

SECRET = "sk-test-DO-NOT-LEAK-1234567890"


class FakeEndpoint:
    """A chat-completions server. ``script[question]`` is a list of behaviours used in turn for
    the requests about that question (the last one repeats): "ok", "429", "500", "400", "slow",
    "garbage", "nochoices", "nocode" (prose without a program). ``answers[question]`` is the
    program an "ok" reply contains."""

    def __init__(self):
        self.script: dict[str, list[str]] = {}
        self.answers: dict[str, str] = {}
        self.calls: dict[str, int] = defaultdict(int)
        self.auth: set[str] = set()
        self.n_seen: list[int] = []
        self.ignore_n = False
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                question = body["messages"][-1]["content"]
                with endpoint.lock:
                    k = endpoint.calls[question]
                    endpoint.calls[question] += 1
                    endpoint.auth.add(self.headers.get("Authorization", ""))
                    endpoint.n_seen.append(body.get("n", 1))
                steps = endpoint.script.get(question, ["ok"])
                what = steps[min(k, len(steps) - 1)]
                if what == "slow":
                    time.sleep(1.5)
                    what = "ok"
                if what in ("429", "500", "400"):
                    return self._send(int(what), {"error": {"message": f"status {what}", "type": "x"}},
                                      {"Retry-After": "0"} if what == "429" else {})
                if what == "garbage":
                    return self._send_raw(200, b"{this is not json")
                if what == "nocode":
                    return self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                            "choices": [{"index": i, "finish_reason": "stop", "message": {
                                                "role": "assistant", "content": "I think it is 7."}}
                                                for i in range(body.get("n", 1))]})
                if what == "nochoices":
                    return self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m"})
                n = 1 if endpoint.ignore_n else body.get("n", 1)
                program = endpoint.answers.get(question, "print(0)")
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"Here:\n```python\n{program}\n```"}}
                           for i in range(n)]
                self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": choices,
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 20 * n, "total_tokens": 100 + 20 * n}})

            def _send(self, code, obj, headers=None):
                self._send_raw(code, json.dumps(obj).encode(), headers)

            def _send_raw(self, code, data, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("MF_TEST_KEY", SECRET)
    ep = FakeEndpoint()
    yield ep
    ep.close()


def make_chat(endpoint, **kw) -> OpenAIChat:
    opts = dict(base_url=endpoint.url, api_key_env="MF_TEST_KEY", concurrency=4, request_timeout_s=0.5,
                deadline_s=20, max_retries=5, backoff_base_s=0.01, backoff_max_s=0.05,
                price_input_per_mtok=1.0, price_output_per_mtok=2.0, seed=0)
    opts.update(kw)
    return OpenAIChat("test-model", **opts)


def problems(k: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(k)]


def test_retries_recover_everything_and_the_cache_makes_a_rerun_free(endpoint, tmp_path):
    probs = problems(6)
    endpoint.script = {"What is 0 + 1?": ["429", "429", "ok"], "What is 1 + 1?": ["500", "ok"],
                       "What is 2 + 1?": ["garbage", "ok"], "What is 3 + 1?": ["slow", "ok"],
                       "What is 4 + 1?": ["nochoices", "500", "ok"]}
    cache_path = tmp_path / "cache" / "openai.jsonl"
    chat = make_chat(endpoint)
    teacher = ChatTeacher(chat, ResponseCache(cache_path), temperature=0.5, max_tokens=64)
    cands = list(teacher.propose(probs, [0, 1]))
    assert sorted((c.problem_id, c.sample) for c in cands) == [(p["id"], s) for p in probs for s in (0, 1)]
    assert all(c.completion and "```python" in c.completion and c.error is None for c in cands)
    # 6 first attempts + 2 + 1 + 1 + 1 (+1 after the slow one's timeout) + 2 retries
    assert chat.usage.retries == 7
    assert chat.usage.errors == {"rate_limited": 2, "http_500": 2, "malformed": 2, "timeout": 1}
    assert chat.usage.failed == 0
    assert chat.usage.prompt_tokens == 600 and chat.usage.completion_tokens == 6 * 40
    assert chat.usage.cost_usd == pytest.approx((600 * 1.0 + 240 * 2.0) / 1e6)
    assert endpoint.auth == {f"Bearer {SECRET}"}  # the key from the env var is what is sent
    rows = [json.loads(line) for line in cache_path.read_text().splitlines()]
    assert len(rows) == 12 and {r["model"] for r in rows} == {"openai:test-model"}
    assert SECRET not in cache_path.read_text()
    # a second run, new objects, same cache file: zero requests
    before = endpoint.total
    chat2 = make_chat(endpoint)
    teacher2 = ChatTeacher(chat2, ResponseCache(cache_path), temperature=0.5, max_tokens=64)
    again = list(teacher2.propose(probs, [0, 1]))
    assert endpoint.total == before and chat2.usage.requests == 0
    assert {(c.problem_id, c.sample): c.completion for c in again} == \
           {(c.problem_id, c.sample): c.completion for c in cands}
    assert all(c.cached for c in again) and teacher2.cache_hits == 12
    # more samples later: only the new indices are requested, in one request per problem
    list(teacher2.propose(probs[:2], [0, 1, 2]))
    assert endpoint.total == before + 2


def test_a_request_that_keeps_failing_is_reported_not_lost(endpoint, tmp_path):
    endpoint.script = {"What is 0 + 1?": ["500"], "What is 1 + 1?": ["400"]}
    chat = make_chat(endpoint, max_retries=3)
    cache = ResponseCache(tmp_path / "c.jsonl")
    teacher = ChatTeacher(chat, cache)
    cands = {c.problem_id: c for c in teacher.propose(problems(3), [0])}
    assert cands["p0"].completion is None and "http_500 after 4 attempt(s)" in cands["p0"].error
    assert cands["p1"].completion is None and "http 400" in cands["p1"].error  # not retryable
    assert endpoint.calls["What is 1 + 1?"] == 1
    assert cands["p2"].completion is not None
    assert chat.usage.failed == 2
    # failures are not cached: a rerun asks again for exactly those
    before = endpoint.total
    endpoint.script = {}
    list(ChatTeacher(make_chat(endpoint), ResponseCache(tmp_path / "c.jsonl")).propose(problems(3), [0]))
    assert endpoint.total == before + 2


def test_deadline_bounds_a_request(endpoint, tmp_path):
    endpoint.script = {"What is 0 + 1?": ["slow"]}
    chat = make_chat(endpoint, request_timeout_s=0.3, deadline_s=1.0, max_retries=100)
    t0 = time.perf_counter()
    (resp,) = chat.complete([ChatRequest.of("p0", [{"role": "user", "content": "What is 0 + 1?"}])])
    assert time.perf_counter() - t0 < 3.0
    assert resp.texts == [] and "deadline" in resp.error


def test_endpoint_that_ignores_n_is_asked_for_the_rest(endpoint):
    endpoint.ignore_n = True
    chat = make_chat(endpoint)
    (resp,) = chat.complete([ChatRequest.of("p", [{"role": "user", "content": "What is 9 + 1?"}], n=3)])
    assert len(resp.texts) == 3 and resp.error is None
    assert endpoint.n_seen == [3, 2, 1]


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MF_NO_SUCH_KEY", raising=False)
    with pytest.raises(ChatConfigError, match=r"\$MF_NO_SUCH_KEY"):
        OpenAIChat("m", api_key_env="MF_NO_SUCH_KEY")
    monkeypatch.setenv("MF_NO_SUCH_KEY", SECRET)
    assert SECRET not in repr(OpenAIChat("m", api_key_env="MF_NO_SUCH_KEY"))


def test_cache_ignores_a_torn_last_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "c.jsonl"
    good = {"id": "p", "model": "m", "prompt_hash": "h", "sample": 0, "text": "x"}
    path.write_text(json.dumps(good) + "\n" + '{"id": "p", "mod')  # crash mid-write
    cache = ResponseCache(path)
    assert len(cache) == 1 and cache.get("p", "m", "h", 0)["text"] == "x"
    path.write_text(json.dumps(good) + "\nnot json\n" + json.dumps({**good, "sample": 1}) + "\n")
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2"):
        ResponseCache(path)


def test_complete_cached_is_the_judge_interface(endpoint, tmp_path):
    """What the PRM stage's LLM judge reuses: any chat prompt, cached by item and sample."""
    chat = make_chat(endpoint)
    cache = ResponseCache(tmp_path / "judge.jsonl")
    req = ChatRequest.of("x", [{"role": "system", "content": "judge"}, {"role": "user", "content": "What is 5 + 1?"}],
                         n=2, temperature=0.0, max_tokens=8)
    first = list(complete_cached(chat, cache, [("item-1", req, [0, 1])]))
    assert [s.cached for s in first] == [False, False] and all(s.text for s in first)
    second = list(complete_cached(chat, ResponseCache(tmp_path / "judge.jsonl"), [("item-1", req, [0, 1])]))
    assert [s.cached for s in second] == [True, True] and endpoint.total == 1
