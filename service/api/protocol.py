"""Wire models of the HTTP API, in OpenAI's shapes (requests validated, responses built)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class RLMOptions(BaseModel):
    """The ``rlm`` body extension (the SDK's ``extra_body={"rlm": {...}}``)."""

    model_config = ConfigDict(extra="forbid")
    context: Any = None
    # The session to continue (same as the x-rlm-session-id header, which wins).
    session_id: str | None = Field(None, min_length=1, max_length=128)
    reset: bool = False
    max_iterations: int | None = Field(None, ge=1, le=1000)
    max_depth: int | None = Field(None, ge=0, le=10)
    include_trajectory: bool = False
    # With stream: true, each iteration streams as delta.reasoning_content while it happens.
    stream_progress: bool = True


class ChatCompletionRequest(BaseModel):
    # Sampling fields OpenAI clients send (temperature, top_p, ...) are accepted and ignored:
    # the RLM decides how it calls its models.
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    rlm: RLMOptions | None = None
    user: str | None = None


def completion_body(
    *,
    completion_id: str,
    model: str,
    answer: str,
    finish_reason: str,
    usage: dict[str, int],
    rlm: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
        "system_fingerprint": None,
        "rlm": rlm,
    }


def chunk_body(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }
