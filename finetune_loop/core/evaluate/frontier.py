"""Optional reference: a frontier model behind an OpenAI-compatible chat completions endpoint,
answering the same holdout with the same prompt. It never gates; it says how far the small model
is from a large one, and at what cost per request.

Configured by environment variables (the endpoint is deployment configuration, not task data):

    FINETUNE_LOOP_FRONTIER_BASE_URL   e.g. https://api.openai.com/v1 (required to enable)
    FINETUNE_LOOP_FRONTIER_MODEL      model name sent in the request (required to enable)
    FINETUNE_LOOP_FRONTIER_API_KEY    bearer token (optional: local servers need none)
    FINETUNE_LOOP_FRONTIER_COST_PER_1K  USD per 1000 tokens, for the cost estimate (optional)
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Sequence

from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.train.prompts import chat_messages

ENV_PREFIX = "FINETUNE_LOOP_FRONTIER_"
REQUEST_TIMEOUT_S = 60
MAX_TOKENS = 64


class FrontierError(RuntimeError):
    """The frontier endpoint is misconfigured or answered something that is not a chat completion."""


@dataclass(frozen=True)
class FrontierSettings:
    base_url: str
    model: str
    api_key: str | None
    cost_per_1k_tokens: float | None


def settings_from_env() -> tuple[FrontierSettings | None, str | None]:
    """The endpoint settings, or None and the reason the comparison is skipped."""
    base_url, model = os.environ.get(ENV_PREFIX + "BASE_URL"), os.environ.get(ENV_PREFIX + "MODEL")
    if not base_url or not model:
        return None, f"skipped: set {ENV_PREFIX}BASE_URL and {ENV_PREFIX}MODEL to compare with a frontier model"
    cost = os.environ.get(ENV_PREFIX + "COST_PER_1K")
    try:
        cost_value = float(cost) if cost else None
    except ValueError as exc:
        raise FrontierError(f"{ENV_PREFIX}COST_PER_1K must be a number, got {cost!r}") from exc
    return FrontierSettings(base_url.rstrip("/"), model, os.environ.get(ENV_PREFIX + "API_KEY") or None, cost_value), None


class FrontierClient:
    def __init__(self, settings: FrontierSettings, spec: TaskSpec):
        self.settings = settings
        self.spec = spec
        self.tokens = 0

    def answer(self, texts: Sequence[str]) -> list[str]:
        return [self._answer(text) for text in texts]

    @property
    def cost_usd(self) -> float | None:
        return None if self.settings.cost_per_1k_tokens is None else self.tokens / 1000 * self.settings.cost_per_1k_tokens

    def _answer(self, text: str) -> str:
        body = {"model": self.settings.model, "messages": chat_messages(self.spec, text), "temperature": 0, "max_tokens": MAX_TOKENS}
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(f"{self.settings.base_url}/chat/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                payload = json.loads(response.read())
            content = payload["choices"][0]["message"]["content"]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise FrontierError(f"frontier endpoint {self.settings.base_url} ({self.settings.model}) failed: {exc}") from exc
        self.tokens += int((payload.get("usage") or {}).get("total_tokens", 0))
        return kind_of(self.spec).canonical_answer(content.strip())
