"""The web layer's errors: :class:`NodeError` subclasses that carry the HTTP status they answer with."""

from __future__ import annotations

from node.errors import NodeError


class WebError(NodeError):
    """An error answered to a web client (JSON ``{"error": message}`` on the API, a page on the dashboard)."""

    status_code = 400
    default_message = "the request cannot be served"


class NotAuthenticatedError(WebError):
    status_code = 401
    default_message = "authentication required: send 'Authorization: Bearer <token>' or log in"


class ForbiddenError(WebError):
    status_code = 403
    default_message = "the request is not allowed (missing or wrong CSRF token)"


class NotFoundError(WebError):
    status_code = 404
    default_message = "not found"


class ConflictError(WebError):
    status_code = 409
    default_message = "the request conflicts with the current state"


class UnavailableError(WebError):
    status_code = 503
    default_message = "a service the node needs is unavailable"


class TooManyAttemptsError(WebError):
    status_code = 429
    default_message = "too many wrong tokens from this address: wait before trying again"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong tokens from this address: try again in {int(retry_after_s + 0.5)} s")
        self.retry_after_s = retry_after_s
