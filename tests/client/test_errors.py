"""Each status code maps to its error class, with the body's code, message and field."""

from __future__ import annotations

import httpx
import pytest

from nacs_client import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NacsError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
)
from nacs_client.errors import error_from_response
from tests.client.fakes import error_json


def response(status: int, body=None, text: str | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://nacs.test/jobs/x")
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, ServiceUnavailableError),
        (504, InternalServerError),
        (405, APIStatusError),
        (410, APIStatusError),
    ],
)
def test_status_maps_to_its_error_class(status, error_class):
    error = error_from_response(response(status, error_json("the_code", "the message", {"x": 1})))
    assert type(error) is error_class
    assert isinstance(error, NacsError)
    assert error.status_code == status
    assert error.code == "the_code"
    assert error.message == "the message"
    assert error.details == {"x": 1}
    assert str(error) == f"HTTP {status} the_code: the message"


@pytest.mark.parametrize(
    ("details", "field"),
    [
        ({"field": "ratio"}, "ratio"),
        (
            [
                {"field": None, "message": "give one budget", "type": "value_error"},
                {"field": "options.rounds", "message": "at most 20", "type": "less_than_equal"},
            ],
            "options.rounds",
        ),
        ({"errors": [{"field": "options.rounds", "message": "too many"}]}, "options.rounds"),
        ([{"loc": ["body", "ratio"], "msg": "must be < 1"}], "ratio"),
        ([{"loc": ["body", "options", "rounds"], "msg": "x"}], "options.rounds"),
        (["size"], "size"),
        (None, None),
        ({"reason": "nothing named"}, None),
    ],
)
def test_bad_request_names_the_field(details, field):
    error = error_from_response(
        response(422, error_json("invalid_request", "ratio: must be < 1", details))
    )
    assert isinstance(error, BadRequestError)
    assert error.field == field


def test_a_body_that_is_not_the_uniform_error_still_gives_a_readable_message():
    error = error_from_response(response(502, text="<html>Bad Gateway</html>"))
    assert isinstance(error, InternalServerError)
    assert error.code is None
    assert "Bad Gateway" in error.message


def test_an_empty_body():
    error = error_from_response(response(404, text=""))
    assert isinstance(error, NotFoundError)
    assert error.message == "Not Found"
