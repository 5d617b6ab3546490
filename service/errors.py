"""The API's errors, and the one place that maps them (and every other failure) to HTTP.

Every error response is ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status_code, code = 400, "bad_request"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class Unprocessable(ApiError):
    status_code, code = 422, "invalid_request"


class TooManyRequests(ApiError):
    status_code, code = 429, "too_many_requests"


class ServiceUnavailable(ApiError):
    status_code, code = 503, "service_unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(error: ApiError) -> JSONResponse:
    headers = dict(error.headers)
    if error.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    body = error_body(error.code, error.message, error.details)
    return JSONResponse(body, status_code=error.status_code, headers=headers)


_WHOLE_BODY = ("missing", "model_attributes_type", "dict_type", "model_type")


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 for a body that is not JSON, else a 422 naming each field and why."""
    details: list[dict[str, Any]] = []
    for item in errors:
        where = ("body", "query", "path", "header")
        field = ".".join(str(part) for part in item.get("loc", ()) if part not in where)
        message = str(item.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        entry = {"field": field or None, "message": message, "type": item.get("type")}
        if item.get("type") == "json_invalid":
            context = item.get("ctx", {}).get("error", "")
            return BadRequest(
                f"the request body is not valid JSON ({context})".replace(" ()", ""),
                code="malformed_json",
                details=[entry | {"field": None}],  # its loc is a character position
            )
        details.append(entry)
    parts = []
    for entry in details:
        field, message = entry["field"], str(entry["message"])
        if not field and entry["type"] in _WHOLE_BODY:
            parts.append("request body: expected a JSON object (Content-Type: application/json)")
        elif field and message.startswith(f"{field}:"):
            parts.append(message)
        elif field:
            parts.append(f"{field}: {message}")
        else:
            parts.append(message if ":" in message.split(" ", 1)[0] else f"request: {message}")
    return Unprocessable(
        "; ".join(parts) or "the request is not valid", code="invalid_request", details=details
    )


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def path_methods(request: Request, router_allow: str) -> list[str]:
    """Every method of the request's path, as the OpenAPI document lists them (a path's
    methods may come from several routes), and OPTIONS, which answers 204 with them in Allow.
    Paths outside the document keep what the router allows (``router_allow``)."""
    methods = {"OPTIONS"}
    path = request.scope.get("path", "")
    for template, operations in request.app.openapi().get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            methods |= {method.upper() for method in operations if method in _HTTP_METHODS}
    if methods == {"OPTIONS"}:
        methods |= {method.strip() for method in router_allow.split(",") if method.strip()}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI parses a body before it runs the dependencies: the key is checked here
        # too, so that a caller without a valid key learns nothing about its request.
        try:
            request.app.state.keyring.tenant(request.headers.get("authorization"))
        except ApiError as refused:
            return error_response(refused)
        return error_response(validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            # The router names the methods of one of the path's routes; Allow lists them all.
            headers = dict(headers or {})
            allowed = path_methods(request, headers.get("Allow", ""))
            headers["Allow"] = ", ".join(allowed)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        mapped: dict[int, tuple[str, str]] = {
            400: ("malformed_json", "the request body could not be parsed as JSON"),
            404: ("not_found", f"no route {request.method} {request.url.path}"),
            405: ("method_not_allowed", f"{request.method} is not allowed on {request.url.path}"),
        }
        code, message = mapped.get(error.status_code, ("http_error", str(error.detail)))
        return JSONResponse(error_body(code, message), error.status_code, headers=headers)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, error: Exception) -> JSONResponse:
        log.warning("redis unreachable: %s", error)
        message = "the job store (Redis) is unreachable; retry later"
        retry = {"Retry-After": "5"}
        return error_response(ServiceUnavailable(message, code="redis_unavailable", headers=retry))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        message = "the service hit an unexpected error; it has been logged"
        return JSONResponse(error_body("internal_error", message), status_code=500)
