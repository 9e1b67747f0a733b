"""Every error the service reports, each knowing its HTTP status and OpenAI error type.

    ServiceError
    ├── BadRequest           400 invalid_request_error
    ├── Unauthorized         401 authentication_error
    ├── NotFound             404 not_found_error   (unknown model, session of another key)
    ├── Conflict             409 invalid_request_error (deleting a busy session)
    ├── SessionLost          410 invalid_request_error (a known session whose state is gone)
    ├── PayloadTooLarge      413 invalid_request_error
    ├── Overloaded           429 rate_limit_error  (queue full; Retry-After)
    ├── BudgetExhausted      429 rate_limit_error  (a key's daily budget; Retry-After)
    ├── ShuttingDown         503 service_unavailable (draining; Retry-After)
    ├── SandboxFailure       503 sandbox_error     (sandbox lost or unavailable)
    ├── UpstreamError        502 upstream_error    (the model API failed after retries)
    └── DeadlineExceeded     504 timeout           (RLM_REQUEST_TIMEOUT_S)

``to_envelope`` turns any of them into OpenAI's ``{"error": {...}}``; the router maps them
to responses in one place. ``code_ran`` marks failures after code ran in the session, which
must not be retried automatically (``x-should-retry: false``).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        code_ran: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.code_ran = code_ran

    def to_envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ServiceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ServiceError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(ServiceError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class BudgetExhausted(ServiceError):
    """A key spent its daily budget (RLM_KEY_DAILY_USD); ``Retry-After`` is the reset."""

    status = 429
    type = "rate_limit_error"
    code = "budget_exceeded"


class ShuttingDown(ServiceError):
    status = 503
    type = "service_unavailable"
    code = "shutting_down"


class SandboxFailure(ServiceError):
    status = 503
    type = "sandbox_error"


class UpstreamError(ServiceError):
    status = 502
    type = "upstream_error"


class DeadlineExceeded(ServiceError):
    status = 504
    type = "timeout"
    code = "request_timeout"


class SessionLost(ServiceError):
    """The session existed but its state is gone (its sandbox died, it was evicted, expired
    or deleted): never answered from an empty REPL under the old id. A reset starts over."""

    status = 410
    type = "invalid_request_error"
    code = "session_lost"


class Conflict(ServiceError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
