"""Chat clients: chat requests in, sampled texts out, shared by the synth stage's teachers and the
PRM stage's LLM judge.

- :class:`ChatModel` is the interface; :class:`OpenAIChat` talks to any OpenAI-compatible
  chat-completions endpoint and :class:`AnthropicChat` to Anthropic's Messages API (both: bounded
  concurrency, exponential back-off with full jitter on 429, 5xx, timeouts, connection errors and
  malformed bodies, ``Retry-After`` honoured, a per-request deadline, token and cost accounting);
  :class:`LocalChat` samples an HF causal LM in batches with
  transformers (``stages.common.generation``), or vLLM when it is installed and a GPU is present.
- :class:`ResponseCache` and :func:`complete_cached`: every paid response is appended to a jsonl
  cache (fsynced) as it arrives, keyed by item id, model, prompt hash and sample index, so a rerun
  after a crash or Ctrl-C pays for nothing twice.

API keys are read from the environment variable the recipe names and are never stored on any
object that is serialised, logged or written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stages.common.checkpoint import resolve_parent
from stages.common.config import ConfigError
from stages.common.data import DataFormatError
from stages.common.generation import generate
from stages.common.modeling import load_causal_lm, load_tokenizer

log = logging.getLogger("mathforge.chat")


class ChatConfigError(ConfigError):
    """A chat client that cannot run as configured (missing API key, model name, backend...)."""


# ---------------------------------------------------------------------------------------------
# The chat layer


@dataclass(frozen=True)
class ChatRequest:
    """``n`` samples of one chat prompt. ``key`` is the caller's name for it (a problem id)."""

    key: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs; hashable
    n: int = 1
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int | None = None

    @staticmethod
    def of(key: str, messages: Sequence[dict[str, str]], **kw: Any) -> ChatRequest:
        return ChatRequest(key, tuple((m["role"], m["content"]) for m in messages), **kw)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class ChatResponse:
    """The texts sampled for a request (fewer than ``n`` only when ``error`` is set)."""

    request: ChatRequest
    texts: list[str]
    finish_reasons: list[str | None] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    error: str | None = None


@dataclass
class Usage:
    """What a chat model consumed in this process: requests, retries, tokens and cost."""

    requests: int = 0  # HTTP requests or generation batches, retries included
    retries: int = 0
    failed: int = 0  # requests given up on (deadline or retries exhausted, or not retryable)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # error kind -> count (retried or not)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ChatModel(Protocol):
    """Chat requests in, sampled texts out. ``name`` identifies the model in cache keys and
    metrics and never holds a secret."""

    name: str
    usage: Usage

    def complete(self, requests: Sequence[ChatRequest],
                 on_response: Callable[[ChatResponse], None] | None = None) -> list[ChatResponse]:
        """Responses in request order; ``on_response`` sees each one as soon as it arrives."""
        ...


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


class _Fatal(Exception):
    """A request that retrying cannot help (400, 401, 403, 404, 422)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _RemoteChat:
    """What every HTTP chat API client shares: bounded concurrency, retries of 429, 5xx, 408/409,
    timeouts, connection errors and malformed bodies with exponential back-off and full jitter
    (``Retry-After`` honoured up to ``backoff_max_s``), a give-up after ``max_retries`` retries in
    a row or ``deadline_s`` seconds per request, and token and cost accounting. Endpoints that
    return fewer samples than asked (or cannot return several) are asked again for the missing
    ones. A subclass supplies ``_call``."""

    def __init__(self, name: str, *, concurrency: int = 8, request_timeout_s: float = 60.0,
                 deadline_s: float = 600.0, max_retries: int = 8, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, price_input_per_mtok: float = 0.0, price_output_per_mtok: float = 0.0,
                 seed: int | None = None):
        for logger in ("httpx", "httpx2"):  # one INFO line per HTTP request otherwise
            logging.getLogger(logger).setLevel(max(logging.WARNING, logging.getLogger(logger).level))
        self.name = name
        self.concurrency = max(1, concurrency)
        self.request_timeout_s, self.deadline_s = request_timeout_s, deadline_s
        self.max_retries, self.backoff_base_s, self.backoff_max_s = max_retries, backoff_base_s, backoff_max_s
        self.prices = (price_input_per_mtok, price_output_per_mtok)
        self.usage = Usage()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def complete(self, requests: Sequence[ChatRequest],
                 on_response: Callable[[ChatResponse], None] | None = None) -> list[ChatResponse]:
        t0 = time.perf_counter()
        out: list[ChatResponse | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="chat")
        futures: dict[Future, int] = {}
        todo = iter(range(len(requests)))
        try:
            # Submit lazily so that an interrupt leaves few requests in flight.
            for i in todo:
                futures[pool.submit(self._one, requests[i])] = i
                if len(futures) >= 2 * self.concurrency:
                    break
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures.pop(f)
                    resp = f.result()
                    out[i] = resp
                    if on_response is not None:
                        on_response(resp)
                    nxt = next(todo, None)
                    if nxt is not None:
                        futures[pool.submit(self._one, requests[nxt])] = nxt
        except BaseException:  # Ctrl-C: drop what is queued, do not wait for requests in flight
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            self.usage.wall_s += time.perf_counter() - t0
        pool.shutdown(wait=True)
        return [r for r in out if r is not None]

    # -- one request, with retries ---------------------------------------------------------

    def _one(self, req: ChatRequest) -> ChatResponse:
        start = time.monotonic()
        texts: list[str] = []
        reasons: list[str | None] = []
        ptok = ctok = 0
        attempt = failures = 0  # attempts in all; retryable failures since the last success
        error: str | None = None
        while len(texts) < req.n:
            remaining = self.deadline_s - (time.monotonic() - start)
            if remaining <= 0:
                error = f"deadline of {self.deadline_s:g}s passed after {attempt} attempt(s)"
                break
            attempt += 1
            self._count(requests=1)
            try:
                choices, usage = self._call(req, req.n - len(texts), min(self.request_timeout_s, remaining),
                                            seed=None if req.seed is None else req.seed + len(texts))
            except _Retryable as e:
                self._count(error=e.kind)
                failures += 1
                if failures > self.max_retries:
                    error = f"{e.kind} after {attempt} attempt(s): {e}"
                    break
                delay = self._backoff(failures, e.retry_after)
                if time.monotonic() - start + delay >= self.deadline_s:
                    error = f"{e.kind}; deadline of {self.deadline_s:g}s would pass before the next retry"
                    break
                self._count(retries=1)
                time.sleep(delay)
                continue
            except _Fatal as e:  # retrying cannot help
                self._count(error=e.kind)
                error = f"{e.kind.replace('_', ' ')}: {e}"
                break
            failures = 0
            ptok += usage[0]
            ctok += usage[1]
            for text, reason in choices:
                texts.append(text)
                reasons.append(reason)
        cost = (ptok * self.prices[0] + ctok * self.prices[1]) / 1e6
        self._count(prompt_tokens=ptok, completion_tokens=ctok, cost_usd=cost, failed=int(error is not None))
        texts, reasons = texts[: req.n], reasons[: req.n]
        return ChatResponse(req, texts, reasons, ptok, ctok, attempt, error)

    def _call(self, req: ChatRequest, n: int, timeout: float, seed: int | None
              ) -> tuple[list[tuple[str, str | None]], tuple[int, int]]:
        """Up to ``n`` samples of ``req``: ``([(text, finish reason)], (prompt tokens, completion
        tokens))``; raises ``_Retryable`` or ``_Fatal``."""
        raise NotImplementedError

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, max(0.0, retry_after))
        with self._lock:  # full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]
            return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))

    def _count(self, *, error: str | None = None, **amounts: float) -> None:
        with self._lock:
            for k, v in amounts.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)
            if error is not None:
                self.usage.errors[error] = self.usage.errors.get(error, 0) + 1


def _api_key(api_key_env: str, client: str) -> str:
    key = os.environ.get(api_key_env, "")
    if not key:
        raise ChatConfigError(f"the {client} client reads its API key from ${api_key_env}, which is not set")
    return key


class OpenAIChat(_RemoteChat):
    """An OpenAI-compatible chat-completions endpoint through the official ``openai`` client (its
    own retries off: :class:`_RemoteChat` retries)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 request_timeout_s: float = 60.0, **kw: Any):
        if not model:
            raise ChatConfigError("the openai client needs a model name (openai_model / judge_model)")
        key = _api_key(api_key_env, "openai")
        import openai  # deferred: heavy import

        super().__init__(f"openai:{model}", request_timeout_s=request_timeout_s, **kw)
        self.model, self.base_url = model, base_url
        # The key lives only inside the client object, which nothing serialises.
        self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=request_timeout_s)
        self._openai = openai

    def __repr__(self) -> str:  # never the key
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

    def _call(self, req: ChatRequest, n: int, timeout: float, seed: int | None):
        oa = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": req.message_dicts(), "n": n,
                                  "temperature": req.temperature, "max_tokens": req.max_tokens, "timeout": timeout}
        if seed is not None:
            kwargs["seed"] = seed
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except oa.RateLimitError as e:
            raise _Retryable("rate_limited", _short(e.message), _retry_after(e)) from e
        except oa.APITimeoutError as e:
            raise _Retryable("timeout", "request timed out") from e
        except oa.APIConnectionError as e:
            raise _Retryable("connection", _short(str(e))) from e
        except oa.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise _Retryable(f"http_{e.status_code}", _short(e.message), _retry_after(e)) from e
            raise _Fatal(f"http_{e.status_code}", _short(e.message)) from e
        except (ValueError, TypeError, KeyError) as e:  # a body that is not JSON
            raise _Retryable("malformed", f"unreadable response body: {_short(str(e))}") from e
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _Retryable("malformed", "response without choices")
        out = []
        for ch in choices:
            content = getattr(getattr(ch, "message", None), "content", None)
            if not isinstance(content, str):
                raise _Retryable("malformed", "a choice without message content")
            out.append((content, getattr(ch, "finish_reason", None)))
        usage = getattr(resp, "usage", None)
        ptok = int(getattr(usage, "prompt_tokens", 0) or 0)
        ctok = int(getattr(usage, "completion_tokens", 0) or 0)
        return out, (ptok, ctok)


class AnthropicChat(_RemoteChat):
    """Anthropic's Messages API (Claude: generate-and-score's judge) through the official
    ``anthropic`` SDK, its own retries off (:class:`_RemoteChat` retries 429, 529 overloaded, 5xx,
    timeouts and malformed bodies). The API returns one sample per request, so ``n`` samples are
    ``n`` requests; system messages go into ``system``; temperature is capped at 1.0 (the API's
    range) and sent only when the installed SDK takes one; the API takes no seed."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "ANTHROPIC_API_KEY",
                 request_timeout_s: float = 60.0, **kw: Any):
        if not model:
            raise ChatConfigError("the anthropic client needs a model name (judge_model, e.g. claude-sonnet-4-0)")
        key = _api_key(api_key_env, "anthropic")
        import anthropic  # deferred: heavy import

        super().__init__(f"anthropic:{model}", request_timeout_s=request_timeout_s, **kw)
        self.model, self.base_url = model, base_url
        # The key lives only inside the client object, which nothing serialises.
        self._client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=request_timeout_s)
        self._anthropic = anthropic
        # SDK releases without a sampling temperature (newer models fix it) get none
        self._takes_temperature = "temperature" in inspect.signature(self._client.messages.create).parameters

    def __repr__(self) -> str:  # never the key
        return f"AnthropicChat(model={self.model!r}, base_url={self.base_url!r})"

    def _call(self, req: ChatRequest, n: int, timeout: float, seed: int | None):
        an = self._anthropic
        system = "\n\n".join(c for r, c in req.messages if r == "system")
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens, "timeout": timeout,
                                  "messages": [{"role": r, "content": c} for r, c in req.messages if r != "system"]}
        if system:
            kwargs["system"] = system
        if self._takes_temperature:
            kwargs["temperature"] = min(1.0, max(0.0, req.temperature))
        try:
            resp = self._client.messages.create(**kwargs)
        except an.RateLimitError as e:
            raise _Retryable("rate_limited", _short(e.message), _retry_after(e)) from e
        except an.APITimeoutError as e:
            raise _Retryable("timeout", "request timed out") from e
        except an.APIConnectionError as e:
            raise _Retryable("connection", _short(str(e))) from e
        except an.APIStatusError as e:  # 529: overloaded
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise _Retryable(f"http_{e.status_code}", _short(e.message), _retry_after(e)) from e
            raise _Fatal(f"http_{e.status_code}", _short(e.message)) from e
        except (an.APIResponseValidationError, ValueError) as e:  # a body that is not JSON
            raise _Retryable("malformed", f"unreadable response body: {_short(str(e))}") from e
        blocks = getattr(resp, "content", None)
        if not isinstance(blocks, list):
            raise _Retryable("malformed", "response without content")
        texts = [getattr(b, "text", None) for b in blocks if getattr(b, "type", None) == "text"]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise _Retryable("malformed", "a response without text content")
        usage = getattr(resp, "usage", None)
        ptok = int(getattr(usage, "input_tokens", 0) or 0)
        ctok = int(getattr(usage, "output_tokens", 0) or 0)
        return [("".join(texts), getattr(resp, "stop_reason", None))], (ptok, ctok)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(e: Any) -> float | None:
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class LocalChat:
    """Any HF causal LM (a hub id, a local folder or a stage checkpoint) sampled with
    transformers in batches through ``stages.common.generation``, or with vLLM when ``backend``
    is ``vllm``, or ``auto`` and vLLM is installed and a GPU is present."""

    def __init__(self, model: str, *, batch_size: int = 16, backend: str = "auto", seed: int = 0,
                 dtype: str = "auto"):
        if not model:
            raise ChatConfigError("the local chat model needs a model (local_model / judge_model: a hub id, folder or checkpoint)")
        if backend not in ("auto", "transformers", "vllm"):
            raise ChatConfigError(f"local_backend must be auto, transformers or vllm, not {backend!r}")
        self.name = f"local:{model}"
        self.model_spec, self.batch_size, self.seed, self.dtype = model, batch_size, seed, dtype
        self.backend = backend
        self.usage = Usage()
        self._model = self._tokenizer = self._llm = None

    def _resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend

        import torch  # deferred: heavy import

        return "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "transformers"

    def _path(self) -> str:
        return resolve_parent(self.model_spec).path

    def complete(self, requests: Sequence[ChatRequest],
                 on_response: Callable[[ChatResponse], None] | None = None) -> list[ChatResponse]:
        t0 = time.perf_counter()
        try:
            if self._resolved_backend() == "vllm":
                return self._complete_vllm(requests, on_response)
            return self._complete_hf(requests, on_response)
        finally:
            self.usage.wall_s += time.perf_counter() - t0

    def _complete_hf(self, requests, on_response) -> list[ChatResponse]:
        if self._model is None:
            path = self._path()
            self._tokenizer = load_tokenizer(path, padding_side="left")
            self._model = load_causal_lm(path, dtype=self.dtype)
            import torch  # deferred: heavy import

            if torch.cuda.is_available():
                self._model.to("cuda")
        tok = self._tokenizer
        out: list[ChatResponse] = []
        # One generate() call per chunk so that responses reach the cache as they are made.
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            groups: dict[tuple, list[int]] = {}
            for j, r in enumerate(chunk):
                groups.setdefault((r.n, r.temperature, r.max_tokens), []).append(j)
            results: dict[int, ChatResponse] = {}
            for (n, temperature, max_tokens), idx in groups.items():
                prompts = [tok.apply_chat_template(chunk[j].message_dicts(), tokenize=False,
                                                   add_generation_prompt=True) for j in idx]
                seed = chunk[idx[0]].seed if chunk[idx[0]].seed is not None else self.seed
                texts = generate(self._model, tok, prompts, max_new_tokens=max_tokens, batch_size=len(prompts),
                                 num_return_sequences=n, temperature=temperature, seed=seed, distributed=False)
                self.usage.requests += 1
                for j, prompt, samples in zip(idx, prompts, texts, strict=True):
                    ptok = len(tok(prompt, add_special_tokens=False)["input_ids"])
                    # counted on the returned text, as an API bills them
                    ctok = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in samples)
                    self.usage.prompt_tokens += ptok
                    self.usage.completion_tokens += ctok
                    results[j] = ChatResponse(chunk[j], list(samples), [None] * len(samples), ptok, ctok)
            for j in range(len(chunk)):
                out.append(results[j])
                if on_response is not None:
                    on_response(results[j])
        return out

    def _complete_vllm(self, requests, on_response) -> list[ChatResponse]:
        # Exercised only where vLLM is installed (the [vllm] extra, on a GPU machine).
        from vllm import LLM, SamplingParams  # deferred: heavy import

        if self._llm is None:
            self._llm = LLM(model=self._path(), seed=self.seed, dtype=self.dtype)
        out: list[ChatResponse] = []
        for start in range(0, len(requests), max(self.batch_size, 256)):
            chunk = requests[start : start + max(self.batch_size, 256)]
            params = [SamplingParams(n=r.n, temperature=r.temperature, max_tokens=r.max_tokens,
                                     seed=r.seed if r.seed is not None else self.seed) for r in chunk]
            results = self._llm.chat([r.message_dicts() for r in chunk], params, use_tqdm=False)
            self.usage.requests += 1
            for r, res in zip(chunk, results, strict=True):
                ptok = len(res.prompt_token_ids or [])
                ctok = sum(len(o.token_ids) for o in res.outputs)
                self.usage.prompt_tokens += ptok
                self.usage.completion_tokens += ctok
                resp = ChatResponse(r, [o.text for o in res.outputs], [o.finish_reason for o in res.outputs],
                                    ptok, ctok)
                out.append(resp)
                if on_response is not None:
                    on_response(resp)
        return out


# ---------------------------------------------------------------------------------------------
# The response cache


def prompt_hash(req: ChatRequest) -> str:
    """What the sampled texts depend on besides the model and the sample index."""
    ident = {"messages": req.messages, "temperature": req.temperature, "max_tokens": req.max_tokens}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class ResponseCache:
    """Append-only jsonl of sampled texts, one line per sample, keyed by (item id, model, prompt
    hash, sample index). Every append is flushed and fsynced, so a response that arrived is never
    paid for again. A torn last line (a crash mid-write) is ignored; a bad line elsewhere is an
    error naming the file and line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._rows: dict[tuple[str, str, str, int], dict] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for lineno, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                key = (row["id"], row["model"], row["prompt_hash"], int(row["sample"]))
                if not isinstance(row["text"], str):
                    raise TypeError("text is not a string")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                if lineno == len(lines):
                    log.warning("%s:%d: ignoring a torn last line (interrupted write)", self.path, lineno)
                    continue
                raise DataFormatError(self.path, lineno, None, f"is not a cache row ({e})") from e
            self._rows[key] = row

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, item_id: str, model: str, phash: str, sample: int) -> dict | None:
        return self._rows.get((item_id, model, phash, sample))

    def add(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                fh.flush()
                os.fsync(fh.fileno())
            for r in rows:
                self._rows[(r["id"], r["model"], r["prompt_hash"], int(r["sample"]))] = r


@dataclass
class CachedSample:
    item_id: str
    sample: int
    text: str | None  # None when the model failed
    cached: bool
    error: str | None = None
    completion_tokens: int = 0


def complete_cached(model: ChatModel, cache: ResponseCache,
                    items: Sequence[tuple[str, ChatRequest, Sequence[int]]]) -> Iterator[CachedSample]:
    """Samples ``indices`` of each ``(item id, request, indices)``: from the cache where present,
    else from ``model`` (one request per item for all its missing samples), appended to the cache
    as each response arrives. Yields cached samples first, then the new ones."""
    todo: list[ChatRequest] = []
    wanted: dict[str, list[int]] = {}
    for item_id, req, indices in items:
        phash = prompt_hash(req)
        missing = []
        for s in indices:
            row = cache.get(item_id, model.name, phash, s)
            if row is None:
                missing.append(s)
            else:
                yield CachedSample(item_id, s, row["text"], True, completion_tokens=row.get("completion_tokens", 0))
        if missing:
            seed = None if req.seed is None else req.seed + missing[0]
            todo.append(ChatRequest(item_id, req.messages, len(missing), req.temperature, req.max_tokens, seed))
            wanted[item_id] = missing
    if not todo:
        return
    fresh: list[CachedSample] = []

    def store(resp: ChatResponse) -> None:
        indices = wanted[resp.request.key]
        phash = prompt_hash(resp.request)
        rows = []
        for k, text in enumerate(resp.texts):
            rows.append({"id": resp.request.key, "model": model.name, "prompt_hash": phash, "sample": indices[k],
                         "text": text, "finish_reason": resp.finish_reasons[k] if k < len(resp.finish_reasons)
                         else None,
                         # a request's tokens are booked on its first sample, so sums stay right
                         "prompt_tokens": resp.prompt_tokens if k == 0 else 0,
                         "completion_tokens": resp.completion_tokens if k == 0 else 0,
                         "time": time.time()})
        cache.add(rows)
        for k, s in enumerate(indices):
            if k < len(resp.texts):
                fresh.append(CachedSample(resp.request.key, s, resp.texts[k], False,
                                          completion_tokens=rows[0]["completion_tokens"] if k == 0 else 0))
            else:
                fresh.append(CachedSample(resp.request.key, s, None, False, error=resp.error or "no response"))

    model.complete(todo, on_response=store)
    yield from fresh
