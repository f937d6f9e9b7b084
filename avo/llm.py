"""The model client: chat completions against any OpenAI-compatible endpoint. `openai` is imported here only.

Shared by the agent (`agent=avo`), the single-shot operator and (later) the supervisor. One call is
`LLMClient.chat(messages, tools=None) -> Reply`; the client

- reads the API key from the environment variable named in the config when it is built (never from the
  config itself), so configs compose and travel (W&B, .hydra/) without secrets;
- retries 429, 5xx, timeouts and dropped connections with exponential backoff (and the server's
  Retry-After, capped); an auth error, an unknown model, an exhausted quota, an unreachable server or a
  request the server never accepted raise `LLMFatalError`, a `UserError` that ends the run with a message
  naming the fix; a transient error that outlasts the retries, or a rejected request after earlier
  successes, raises `LLMError`, which ends the agent's step but not the run;
- accounts tokens (input, cached, output) and cost (prices per million tokens) per call in `Reply.usage`;
- reports every request, response and retry to `on_event` (the agent's trajectory), with secrets redacted.
"""
from __future__ import annotations

import logging
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import openai

from avo.errors import UserError

log = logging.getLogger(__name__)
# The HTTP client logs every request at INFO: keep run.log to what matters (the trajectory has every call).
for _name in ("httpx", "httpx2", "openai"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Anything that looks like a key or a bearer token, wherever it turns up (tool output, error messages).
_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(r"\b(?:ghp|gho|ghs|github_pat|hf|xox[abp])_[A-Za-z0-9_]{16,}"),
]
_KNOWN_SECRETS: set[str] = set()
REDACTED = "[REDACTED]"
# Environment variables a child process (the agent's shell, a CLI agent's tools) must not see by default.
SECRET_ENV_RE = re.compile(r"(?i)(API_?KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)")


def register_secret(value: Optional[str]) -> None:
    """Remember a secret value (e.g. the API key read from the environment) so `redact` removes it."""
    if value and len(value) >= 6:
        _KNOWN_SECRETS.add(value)


def redact(obj: Any) -> Any:
    """`obj` (str, or JSON-like containers of them) with known secrets and key-like strings replaced."""
    if isinstance(obj, str):
        for secret in _KNOWN_SECRETS:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
        for pattern in _SECRET_PATTERNS:
            obj = pattern.sub(REDACTED, obj)
        return obj
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def scrubbed_env(keep: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without API keys, tokens and secrets (for commands the agent runs)."""
    return {k: v for k, v in os.environ.items() if k in keep or not SECRET_ENV_RE.search(k)}


class LLMError(Exception):
    """A model call failed after retries (or the server rejected one request): ends the step, not the run."""


class LLMContextOverflow(LLMError):
    """The request did not fit the model's context window: the caller should compact and try again."""


class LLMFatalError(UserError):
    """The model cannot be used as configured (key, model name, quota, endpoint): ends the run at once."""


class LLMOutageError(UserError):
    """The model server, reachable before, stayed down longer than `max_outage_s`: the run ends cleanly."""


@dataclass
class Prices:
    """USD per million tokens."""

    input: float = 0.0
    cached: float = 0.0
    output: float = 0.0


@dataclass
class Usage:
    input: int = 0  # prompt tokens not served from the cache
    cached: int = 0  # prompt tokens served from the server's prompt cache
    output: int = 0  # completion tokens (reasoning included)
    cost_usd: float = 0.0
    calls: int = 0

    @property
    def prompt(self) -> int:
        return self.input + self.cached

    @property
    def total(self) -> int:
        return self.input + self.cached + self.output

    def add(self, other: "Usage") -> "Usage":
        self.input += other.input
        self.cached += other.cached
        self.output += other.output
        self.cost_usd += other.cost_usd
        self.calls += other.calls
        return self

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Usage":
        d = d or {}
        return cls(**{k: d[k] for k in ("input", "cached", "output", "cost_usd", "calls") if k in d})


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model wrote it (may be malformed: the caller checks)


@dataclass
class Reply:
    content: str
    tool_calls: list[ToolCall]
    finish_reason: Optional[str]
    usage: Usage
    reasoning: str = ""  # reasoning_content of servers that return it separately (kept for the trajectory)
    empty: bool = False  # the response had no choices at all

    def assistant_message(self) -> dict:
        """The turn as it is sent back: `content` is always a string (some servers reject null or a missing one)."""
        msg: dict = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in self.tool_calls]
        return msg


@dataclass
class LLMSettings:
    """Plain values for the client (the agent configs carry the same fields)."""

    model: str
    base_url: str
    api_key_env: Optional[str] = None
    temperature: Optional[float] = None
    max_output_tokens: Optional[int] = 8192
    max_tokens_param: str = "max_completion_tokens"  # or "max_tokens" for servers that only know that one
    reasoning_effort: Optional[str] = None
    context_window: int = 128_000
    prices: Prices = field(default_factory=Prices)
    timeout_s: float = 600.0
    max_retries: int = 6
    retry_backoff_s: float = 2.0
    retry_max_wait_s: float = 120.0
    # Once the server has answered, connection errors (refused, dropped, timed out) are an outage: waited out
    # (with backoff, not counted against max_retries) for up to this many seconds, then LLMOutageError ends the
    # run cleanly.
    max_outage_s: float = 3600.0
    extra_body: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> "LLMSettings":
        prices = getattr(cfg, "prices", None)
        prices = Prices(**{k: float(getattr(prices, k, 0.0) or 0.0) for k in ("input", "cached", "output")}) if prices else Prices()
        names = [f for f in cls.__dataclass_fields__ if f != "prices"]
        values = {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
        values["extra_body"] = dict(values.get("extra_body") or {})
        return cls(prices=prices, **values)


LOCAL_SERVER_HINT = ("start an OpenAI-compatible server there (e.g. `vllm serve Qwen/Qwen3-Coder-30B-A3B-Instruct "
                     "--port 8000 --enable-auto-tool-choice --tool-call-parser qwen3_coder`, or `ollama serve` with "
                     "agent=avo_ollama), or point agent.base_url at a running one")


def api_key_from_env(env_name: Optional[str], base_url: str) -> str:
    if not env_name:
        return "EMPTY"  # local servers started without --api-key accept anything
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise LLMFatalError(
            f"no API key: the environment variable {env_name} is not set (agent.api_key_env={env_name}, endpoint "
            f"{base_url}). Set it (export {env_name}=...) or, for a local server without a key, agent.api_key_env=null.")
    register_secret(key)
    return key


class LLMClient:
    def __init__(self, settings: LLMSettings, on_event: Optional[Callable[[dict], None]] = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.on_event = on_event or (lambda e: None)
        self._sleep = sleep
        self._clock = clock
        self.waited_s = 0.0  # seconds spent waiting out failures (the agent does not charge them to its step)
        self._succeeded = False
        key = api_key_from_env(settings.api_key_env, settings.base_url)
        self._client = openai.OpenAI(api_key=key, base_url=settings.base_url, timeout=settings.timeout_s,
                                     max_retries=0)

    # ------------------------------------------------------------------ accounting

    def usage_of(self, raw_usage: Optional[dict]) -> Usage:
        u = raw_usage or {}
        prompt = int(u.get("prompt_tokens") or 0)
        details = u.get("prompt_tokens_details") or {}
        cached = int((details.get("cached_tokens") if isinstance(details, dict) else 0) or u.get("prompt_cache_hit_tokens") or 0)
        cached = min(cached, prompt)
        output = int(u.get("completion_tokens") or 0)
        p = self.settings.prices
        cost = ((prompt - cached) * p.input + cached * p.cached + output * p.output) / 1e6
        return Usage(input=prompt - cached, cached=cached, output=output, cost_usd=cost, calls=1)

    # ------------------------------------------------------------------ calls

    def _request(self, messages: list[dict], tools: Optional[list[dict]]) -> dict:
        s = self.settings
        kwargs: dict = {"model": s.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        if s.reasoning_effort:
            kwargs["reasoning_effort"] = s.reasoning_effort
        extra = dict(s.extra_body or {})
        if s.max_output_tokens:
            if s.max_tokens_param == "max_completion_tokens":
                kwargs["max_completion_tokens"] = s.max_output_tokens
            else:
                extra[s.max_tokens_param] = s.max_output_tokens
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _fatal(self, exc: Exception, status: Optional[int]) -> Optional[LLMFatalError]:
        s = self.settings
        msg = redact(_error_message(exc))
        if status in (401, 403):
            where = f"the key in ${s.api_key_env}" if s.api_key_env else "no API key (agent.api_key_env=null)"
            return LLMFatalError(f"{s.base_url} refused {where} ({status}: {msg}). Check the key, or set "
                                 f"agent.api_key_env to the variable that holds the right one.")
        if status == 404:
            return LLMFatalError(f"model {s.model!r} not found at {s.base_url} (404: {msg}). Set agent.model to a "
                                 f"model the server serves (GET {s.base_url.rstrip('/')}/models lists them) and check "
                                 f"that agent.base_url ends in /v1.")
        if status == 429 and "quota" in msg.lower():
            return LLMFatalError(f"{s.base_url}: quota exhausted (429: {msg}). Add credit or use another key/endpoint.")
        return None

    def chat(self, messages: list[dict], tools: Optional[list[dict]] = None) -> Reply:
        kwargs = self._request(messages, tools)
        s = self.settings
        attempt = 0
        outage_started: Optional[float] = None
        while True:
            attempt += 1
            started = time.time()
            try:
                completion = self._client.chat.completions.create(**kwargs)
                raw = completion.model_dump(exclude_none=True) if hasattr(completion, "model_dump") else dict(completion)
                break
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                fatal = self._fatal(exc, status)
                if fatal is not None:
                    self.on_event({"type": "llm_error", "status": status, "error": redact(_error_message(exc)), "fatal": True})
                    raise fatal from None
                transient = status is None or status in (408, 409, 429) or status >= 500
                msg = redact(_error_message(exc))
                self.on_event({"type": "llm_error", "status": status, "error": msg, "attempt": attempt,
                               "elapsed_s": time.time() - started, "retry": transient and attempt <= s.max_retries})
                if not transient:
                    if _is_context_overflow(msg):
                        raise LLMContextOverflow(f"the request exceeds the model's context window ({status}: {msg})") from None
                    if not self._succeeded:
                        raise LLMFatalError(f"{s.base_url} rejected the first request to model {s.model!r} ({status}: "
                                            f"{msg}). Check agent.* (model, max_output_tokens, max_tokens_param, "
                                            "reasoning_effort, temperature, protocol) against what the server supports.") from None
                    raise LLMError(f"the server rejected the request ({status}: {msg})") from None
                outage = self._succeeded and status is None and s.max_outage_s > 0  # no answer at all
                if outage:
                    now = self._clock()
                    outage_started = now if outage_started is None else outage_started
                    if now - outage_started >= s.max_outage_s:
                        raise LLMOutageError(
                            f"the model server at {s.base_url} has been down for {(now - outage_started) / 60:.1f} "
                            f"minutes ({msg}; agent.max_outage_s={s.max_outage_s:g}). The run stops here, with "
                            "everything saved: start the same command (or resume=<run_dir>) once the server is back.") from None
                elif attempt > s.max_retries:
                    if status is None and not self._succeeded:
                        raise LLMFatalError(f"cannot reach the model server at {s.base_url} ({msg}, {attempt} tries): "
                                            f"{LOCAL_SERVER_HINT}.") from None
                    raise LLMError(f"{s.base_url}: {msg} (gave up after {attempt} tries)") from None
                wait = min(s.retry_max_wait_s, s.retry_backoff_s * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
                retry_after = _retry_after(exc)
                if retry_after is not None:
                    wait = min(s.retry_max_wait_s, max(wait, retry_after))
                if outage:
                    log.warning("model server down (%s) for %.0fs; waiting %.1fs (up to agent.max_outage_s=%g)",
                                msg[:200], self._clock() - outage_started, wait, s.max_outage_s)
                else:
                    log.warning("model call failed (%s); retry %d/%d in %.1fs", msg[:200], attempt, s.max_retries, wait)
                waited = self._clock()
                self._sleep(wait)
                self.waited_s += max(wait, self._clock() - waited)
        self._succeeded = True
        reply = self._parse(raw)
        self.on_event({"type": "response", "elapsed_s": round(time.time() - started, 3), "finish_reason": reply.finish_reason,
                       "content": redact(reply.content), "reasoning": redact(reply.reasoning),
                       "tool_calls": [redact(asdict(c)) for c in reply.tool_calls], "usage": reply.usage.to_dict(),
                       "empty": reply.empty, "model": raw.get("model")})
        return reply

    def _parse(self, raw: dict) -> Reply:
        usage = self.usage_of(raw.get("usage"))
        choices = raw.get("choices") or []
        if not choices:
            return Reply("", [], None, usage, empty=True)
        choice = choices[0] or {}
        msg = choice.get("message") or {}
        content = msg.get("content") or ""
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        calls = []
        for i, tc in enumerate(msg.get("tool_calls") or []):
            fn = (tc or {}).get("function") or {}
            args = fn.get("arguments")
            if not isinstance(args, str):  # some servers send an object
                import json

                args = json.dumps(args if args is not None else {})
            calls.append(ToolCall(id=str(tc.get("id") or f"call_{i}"), name=str(fn.get("name") or ""), arguments=args))
        reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
        return Reply(str(content), calls, choice.get("finish_reason"), usage,
                     reasoning=reasoning if isinstance(reasoning, str) else str(reasoning))


def _error_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(exc) or type(exc).__name__


def _retry_after(exc: Exception) -> Optional[float]:
    response = getattr(exc, "response", None)
    try:
        value = response.headers.get("retry-after") if response is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def _is_context_overflow(msg: str) -> bool:
    m = msg.lower()
    return any(s in m for s in ("context length", "context_length", "maximum context", "context window",
                                "too many tokens", "prompt is too long", "exceeds the model"))
