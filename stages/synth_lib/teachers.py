"""Teachers for the synth stage: where candidate PoT solutions come from.

- :class:`ChatTeacher`: a chat model (``stages.common.chat``: an OpenAI-compatible endpoint or a
  local HF model) prompted with the shared PoT prompt, every response through the cache;
- :class:`GSM8KAnnotationTeacher`: GSM8K's calculator annotations turned into programs
  (:mod:`stages.synth_lib.gsm8k_pot`), offline and free;
- :class:`ReferenceTeacher`: the embedded arithmetic task's reference programs (the tiny recipe).

Every candidate is verified in the sandbox by the synth stage, whatever its teacher.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stages.common.chat import ChatModel, ChatRequest, ResponseCache, complete_cached, prompt_hash
from stages.common.config import ConfigError
from stages.common.pot import SYSTEM_PROMPT, build_messages, format_completion
from stages.synth_lib.gsm8k_pot import convert


class TeacherError(ConfigError):
    """A teacher that cannot run as configured (unknown name, missing API key or model, ...)."""


@dataclass
class Candidate:
    """One candidate solution of a problem (``completion`` None when the teacher gave nothing;
    ``error`` says why)."""

    problem_id: str
    sample: int
    completion: str | None
    source: str
    error: str | None = None
    cached: bool = False


class Teacher(Protocol):
    name: str
    deterministic: bool  # the same sample every time: one round is enough

    def propose(self, problems: Sequence[dict], samples: Sequence[int]) -> Iterator[Candidate]:
        """Candidates ``samples`` (indices) of each problem."""
        ...

    def metrics(self) -> dict[str, Any]:
        ...


class ReferenceTeacher:
    """The embedded arithmetic task's reference programs (problems from ``arith:...`` carry a
    ``program``); the tiny recipe's teacher. Verified in the sandbox like every other teacher."""

    name = "reference"
    deterministic = True

    def propose(self, problems: Sequence[dict], samples: Sequence[int]) -> Iterator[Candidate]:
        for p in problems:
            program = p.get("program")
            if not isinstance(program, str) or not program.strip():
                yield Candidate(p["id"], samples[0], None, self.name, "no reference program")
            else:
                yield Candidate(p["id"], samples[0], format_completion(program), self.name)

    def metrics(self) -> dict[str, Any]:
        return {}


class GSM8KAnnotationTeacher:
    """GSM8K's calculator-annotated worked solutions turned into PoT programs with real data flow
    (:mod:`stages.synth_lib.gsm8k_pot`); needs the ``solution`` field that ``gsm8k:`` sources carry."""

    name = "gsm8k-annotations"
    deterministic = True

    def __init__(self) -> None:
        self.links = 0
        self.steps = 0
        self.converted = 0

    def propose(self, problems: Sequence[dict], samples: Sequence[int]) -> Iterator[Candidate]:
        for p in problems:
            solution = p.get("solution")
            if not isinstance(solution, str):
                yield Candidate(p["id"], samples[0], None, self.name, "no worked solution (solution field)")
                continue
            conv = convert(p["question"], solution, p["answer"])
            if conv.program is None:
                yield Candidate(p["id"], samples[0], None, self.name, f"not convertible: {conv.reason}")
                continue
            self.converted += 1
            self.links += conv.links
            self.steps += conv.steps
            yield Candidate(p["id"], samples[0], format_completion(conv.program), self.name)

    def metrics(self) -> dict[str, Any]:
        return {"converted": self.converted, "program_steps": self.steps, "data_flow_links": self.links}


class ChatTeacher:
    """A chat model asked for PoT solutions with the shared prompt (system message plus optional
    few-shot examples); every response goes through the cache."""

    deterministic = False

    def __init__(self, model: ChatModel, cache: ResponseCache, *, few_shot: Sequence[tuple[str, str]] = (),
                 system_prompt: str | None = SYSTEM_PROMPT, temperature: float = 0.7, max_tokens: int = 512,
                 seed: int = 0):
        self.model, self.cache = model, cache
        self.name = model.name
        self.few_shot, self.system_prompt = list(few_shot), system_prompt
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.cache_hits = 0
        self.new_samples = 0
        self.failed_samples = 0

    def request(self, problem: dict, n: int = 1) -> ChatRequest:
        messages = build_messages(problem["question"], self.few_shot, self.system_prompt)
        return ChatRequest.of(problem["id"], messages, n=n, temperature=self.temperature,
                              max_tokens=self.max_tokens, seed=self.seed)

    def pending(self, problems: Sequence[dict], samples: Sequence[int]) -> int:
        """How many samples would be requested (not in the cache): the dry run's count."""
        count = 0
        for p in problems:
            phash = prompt_hash(self.request(p))
            count += sum(self.cache.get(p["id"], self.name, phash, s) is None for s in samples)
        return count

    def propose(self, problems: Sequence[dict], samples: Sequence[int]) -> Iterator[Candidate]:
        items = [(p["id"], self.request(p), list(samples)) for p in problems]
        for s in complete_cached(self.model, self.cache, items):
            if s.cached:
                self.cache_hits += 1
            elif s.text is None:
                self.failed_samples += 1
            else:
                self.new_samples += 1
            error = None if s.text is not None else f"teacher_error: {s.error}"
            yield Candidate(s.item_id, s.sample, s.text, self.name, error, s.cached)

    def metrics(self) -> dict[str, Any]:
        return {"cache_hits": self.cache_hits, "new_samples": self.new_samples,
                "failed_samples": self.failed_samples, "usage": self.model.usage.to_json()}
