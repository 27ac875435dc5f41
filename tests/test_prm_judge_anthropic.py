"""The PRM's Anthropic judge (generate-and-score's Claude judge) against a real HTTP server speaking
Anthropic's Messages API on 127.0.0.1, through the real ``anthropic`` SDK: step verdicts parsed,
529 / 429 / 500 / malformed bodies retried, the key sent and never stored, the response cache
shared with the OpenAI client so a rerun pays nothing."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from stages.common.chat import AnthropicChat, ChatConfigError, ResponseCache
from stages.prm_lib import labels
from stages.prm_lib.labelling import judge_model

SECRET = "sk-ant-test-DO-NOT-LEAK-0987654321"


class FakeMessagesAPI:
    """``POST /v1/messages``. ``script[problem]`` lists behaviours used in turn for the requests
    about that problem (the last one repeats): "ok", "429", "500", "529" (overloaded), "400",
    "garbage". An "ok" reply judges each step: a step containing "/ 0" is incorrect."""

    def __init__(self):
        self.script: dict[str, list[str]] = {}
        self.programs: dict[str, tuple[str, str, int]] = {}  # question -> (right, wrong, wrong samples first)
        self.calls: dict[str, int] = defaultdict(int)
        self.keys: set[str] = set()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = body["messages"][-1]["content"]
                if user in api.programs:  # asked to solve (judge_generates): wrong samples first, then right ones
                    right, wrong, n_wrong = api.programs[user]
                    with api.lock:
                        k = api.calls[user]
                        api.calls[user] += 1
                    text = f"```python\n{wrong if k < n_wrong else right}\n```"
                    return self._send(200, {"id": "m", "type": "message", "role": "assistant", "model": body["model"],
                                            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                            "usage": {"input_tokens": 80, "output_tokens": 30}})
                problem = user.split("\n")[1]
                with api.lock:
                    k = api.calls[problem]
                    api.calls[problem] += 1
                    api.keys.add(self.headers.get("x-api-key") or self.headers.get("Authorization", ""))
                    api.bodies.append(body)
                steps = api.script.get(problem, ["ok"])
                what = steps[min(k, len(steps) - 1)]
                if what in ("429", "500", "529", "400"):
                    kind = {"429": "rate_limit_error", "529": "overloaded_error"}.get(what, "api_error")
                    return self._send(int(what), {"type": "error", "error": {"type": kind, "message": what}},
                                      {"retry-after": "0"} if what == "429" else {})
                if what == "garbage":
                    return self._raw(200, b"{not json")
                bodies = re.split(r"Step \d+:\n", user.split("Solution steps:\n", 1)[1])[1:]
                verdicts = "\n".join(f"Step {i + 1}: {'incorrect' if '/ 0' in s or '-1' in s else 'correct'}"
                                     for i, s in enumerate(bodies))
                self._send(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                                 "content": [{"type": "text", "text": verdicts}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": {"input_tokens": 50, "output_tokens": 10}})

            def _send(self, code, obj, headers=None):
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code, data, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("MF_ANTHROPIC_TEST_KEY", SECRET)
    server = FakeMessagesAPI()
    yield server
    server.close()


def _judge(api, **kw) -> AnthropicChat:
    opts = dict(base_url=api.url, api_key_env="MF_ANTHROPIC_TEST_KEY", concurrency=3, request_timeout_s=2.0,
                deadline_s=20, max_retries=4, backoff_base_s=0.01, backoff_max_s=0.05,
                price_input_per_mtok=3.0, price_output_per_mtok=15.0, seed=0)
    opts.update(kw)
    return AnthropicChat("claude-sonnet-4-0", **opts)


def test_anthropic_judge_labels_steps_retries_and_the_cache_makes_a_rerun_free(api, tmp_path):
    items = [("s1", "Q1", ["a = 1", "b = a / 0", "print(b)"]), ("s2", "Q2", ["x = 2", "print(x)"]),
             ("s3", "Q3", ["y = 5 / 0", "print(y)"]), ("s4", "Q4", ["print(7)"])]
    api.script = {"Q1": ["529", "ok"], "Q2": ["429", "500", "ok"], "Q3": ["garbage", "ok"]}
    chat = _judge(api)
    cache_path = tmp_path / "prm_judge_cache.jsonl"
    verdicts = labels.judge_labels(chat, ResponseCache(cache_path), items)
    assert verdicts == [[True, False, True], [True, True], [False, True], [True]]
    assert chat.usage.errors == {"http_529": 1, "rate_limited": 1, "http_500": 1, "malformed": 1}
    assert chat.usage.retries == 4 and chat.usage.failed == 0
    assert chat.usage.prompt_tokens == 4 * 50 and chat.usage.completion_tokens == 4 * 10
    assert chat.usage.cost_usd == pytest.approx((200 * 3.0 + 40 * 15.0) / 1e6)
    assert api.keys in ({SECRET}, {f"Bearer {SECRET}"})  # the key from the env var is what is sent
    first = api.bodies[0]
    # temperature goes out only where the installed SDK takes one (newer releases have none)
    assert first["model"] == "claude-sonnet-4-0" and first.get("temperature", 0.0) == 0.0
    assert first["system"] == labels.JUDGE_SYSTEM and [m["role"] for m in first["messages"]] == ["user"]
    rows = [json.loads(x) for x in cache_path.read_text().splitlines()]
    assert len(rows) == 4 and {r["model"] for r in rows} == {"anthropic:claude-sonnet-4-0"}
    assert SECRET not in cache_path.read_text() and SECRET not in repr(chat)
    before = api.total
    again = labels.judge_labels(_judge(api), ResponseCache(cache_path), items)
    assert again == verdicts and api.total == before  # nothing paid twice


def test_anthropic_samples_n_by_n_requests_and_gives_up_cleanly(api):
    from stages.common.chat import ChatRequest

    chat = _judge(api)
    msgs = labels.judge_messages("Q5", ["print(1)"])
    (resp,) = chat.complete([ChatRequest.of("k", msgs, n=3, temperature=1.7, max_tokens=64)])
    assert len(resp.texts) == 3 and resp.error is None and api.calls["Q5"] == 3  # no n in the API
    assert {b.get("temperature", 1.0) for b in api.bodies} == {1.0}  # the API's range, when sent
    api.script = {"Q6": ["400"], "Q7": ["500"]}
    bad, down = chat.complete([ChatRequest.of("b", labels.judge_messages("Q6", ["x = 1"])),
                               ChatRequest.of("d", labels.judge_messages("Q7", ["x = 1"]))])
    assert bad.texts == [] and bad.error.startswith("http 400") and api.calls["Q6"] == 1  # not retried
    assert down.texts == [] and "http_500 after 5 attempt(s)" in down.error  # max_retries 4


def test_the_prm_stage_builds_the_anthropic_judge(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args = SimpleNamespace(judge="anthropic", judge_model="claude-sonnet-4-0", judge_base_url=None,
                           judge_api_key_env=None, seed_judge=0, gen_batch_size=8)
    with pytest.raises(ChatConfigError, match=r"\$ANTHROPIC_API_KEY"):
        judge_model(args, tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    chat = judge_model(args, tmp_path)
    assert isinstance(chat, AnthropicChat) and chat.name == "anthropic:claude-sonnet-4-0"
    with pytest.raises(ChatConfigError, match="judge_model"):
        judge_model(SimpleNamespace(**{**vars(args), "judge_model": None}), tmp_path)


@pytest.mark.slow
def test_generate_and_score_end_to_end_claude_writes_and_judges_mining_filters(api, tmp_path):
    """generate-and-score's method 2 on the tiny backbone: the (fake) Claude writes 5 solutions per
    problem and judges their steps; mistake mining keeps the problems it fails 30% to 80% of the time."""
    from stages.common.arith import generate_problems
    from stages.prm import main

    problems = generate_problems(6, split="train", seed=11)
    for n_wrong, p in enumerate(problems):  # fail rates 0, 0.2, 0.4, 0.6, 0.8, 1.0
        api.programs[p["question"]] = (p["program"], "answer = -1\nprint(answer)", n_wrong)
    recipe = tmp_path / "prm.yaml"
    settings = {"model_name_or_path": "tiny", "dtype": "float32", "attn_implementation": "eager", "use_cpu": True,
                "seed": 0, "num_train_epochs": 1, "save_strategy": "no", "report_to": "none", "bon_problems": "none",
                "label_source": "judge", "judge": "anthropic", "judge_model": "claude-sonnet-4-0",
                "judge_base_url": api.url, "judge_api_key_env": "MF_ANTHROPIC_TEST_KEY", "judge_generates": True,
                "judge_transform": "he", "label_problems": "arith:train:6:11", "eval_fraction": 0.0}
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    runs = tmp_path / "runs"
    out = main(["--config", str(recipe), "--runs_dir", str(runs), "--run", "r"])
    m = json.loads((out / "metrics.json").read_text())["labels"]
    assert (m["mining"], m["problems"], m["problems_kept"]) == ("filter", 6, 3)  # samples_per_problem 5: the default
    assert m["samples"] == 30 and m["solutions"] == 6  # one right and one wrong distinct program per kept problem
    rows = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    kept = {problems[k]["question"] for k in (2, 3, 4)}
    assert {r["prompt"] for r in rows} == kept
    # HE: +1 only when the step and the whole solution are right, stored as (r + 1) / 2
    assert sorted(tuple(r["labels"]) for r in rows if not r["solution_correct"]) == [(0.0, 0.0)] * 3
    assert all(set(r["labels"]) == {1.0} for r in rows if r["solution_correct"])
    assert m["judge_usage"]["requests"] == 30 + 6 and m["judge_failed"] == 0
    before = api.total
    again = main(["--config", str(recipe), "--runs_dir", str(runs), "--run", "r", "--learning_rate", "1e-4"])
    assert again != out and api.total == before  # a new version, and the cache paid for every response
