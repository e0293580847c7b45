"""Choosing our answer to what aiohttp's parser raised (gateway.app.bad_requests)."""

import pytest
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong, TransferEncodingError

from gateway.app.bad_requests import parse_error
from gateway.errors import Kind

LIMITS = {"line_limit": 65536, "field_limit": 65537}


@pytest.mark.parametrize(
    "exc, status, kind",
    [
        (LineTooLong(b"/aaa...", 65536), 400, Kind.URL_TOO_LONG),
        (LineTooLong(b"x-big: ...", 65537), 400, Kind.HEADERS_TOO_LARGE),
        (LineTooLong(b"?"), 400, Kind.HEADERS_TOO_LARGE),
        (BadHttpMessage("Too many headers received"), 400, Kind.HEADERS_TOO_LARGE),
        (BadHttpMessage("Invalid header value char:\n\n  b'Authorization: Bearer t\\x7f'"), 400, Kind.INVALID_REQUEST),
        (InvalidHeader(b"Authorization: Bearer t\n"), 400, Kind.INVALID_REQUEST),
        # A broken body read inside a handler reaches aiohttp as a 500: still the request's fault.
        (TransferEncodingError("Not enough data"), 500, Kind.INVALID_REQUEST),
        (ValueError("a bug"), 500, Kind.INTERNAL),
        (None, 400, Kind.INVALID_REQUEST),
    ],
)
def test_parser_errors_map_to_our_kinds(exc, status, kind):
    assert parse_error(exc, status, **LIMITS).kind is kind


def test_equal_limits_never_claim_a_url_is_too_long():
    err = parse_error(LineTooLong(b"x", 100), 400, line_limit=100, field_limit=100)
    assert err.kind is Kind.HEADERS_TOO_LARGE


def test_messages_never_quote_the_request():
    for exc in (LineTooLong(b"SECRET", 65536), BadHttpMessage("bad: SECRET"), InvalidHeader(b"SECRET")):
        assert "SECRET" not in parse_error(exc, 400, **LIMITS).message
