"""Wire models of the HTTP API, in OpenAI's shapes (requests validated, responses built)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    # Cost cap of this request in USD (at most RLM_MAX_COST_USD; past it: stopped_by "cost").
    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False, strict=True)
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


# ---- the Responses API (POST /v1/responses) ----------------------------------------------

# OpenAI's limits on ``metadata``: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


class InputPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class InputMessage(BaseModel):
    """One item of ``input``: an easy input message (no ``type``) or a ``message`` item.

    Other item types (function call outputs, item references) are refused: an RLM turn has
    no tools to call."""

    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        kinds = ("input_text", "output_text", "text")
        return "".join(p.text or "" for p in self.content if p.type in kinds)


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``: ``input`` is the query, ``rlm`` carries the context and options
    exactly as in chat completions. Sampling fields (temperature, reasoning, text, ...) are
    accepted and ignored, as in chat completions."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    store: bool = True
    background: bool = False
    stream: bool = False
    metadata: dict[str, str] | None = None
    tools: list[Any] | None = None
    rlm: RLMOptions | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if isinstance(self.input, str):
            if not self.input.strip():
                raise ValueError("input: the query is empty")
        elif not any(m.role == "user" and m.text().strip() for m in self.input):
            raise ValueError("input: needs a user message with text (the query)")
        if self.tools:
            raise ValueError("tools: an RLM turn calls no client tools; send none")
        if self.background and not self.store:
            raise ValueError("background: a background response must be stored (store: true)")
        md = self.metadata or {}
        if len(md) > METADATA_PAIRS or any(
            len(k) > METADATA_KEY_CHARS or len(v) > METADATA_VALUE_CHARS for k, v in md.items()
        ):
            raise ValueError(
                f"metadata: at most {METADATA_PAIRS} pairs, keys up to {METADATA_KEY_CHARS} "
                f"and values up to {METADATA_VALUE_CHARS} characters"
            )
        return self

    def to_chat(self) -> ChatCompletionRequest:
        """The same turn as a chat completion request: ``instructions`` is a system message,
        the input items are the messages (the last user message is the query)."""
        messages: list[ChatMessage] = []
        if self.instructions:
            messages.append(ChatMessage(role="system", content=self.instructions))
        if isinstance(self.input, str):
            messages.append(ChatMessage(role="user", content=self.input))
        else:
            messages.extend(ChatMessage(role=m.role, content=m.text()) for m in self.input)
        return ChatCompletionRequest(model=self.model, messages=messages, rlm=self.rlm)
