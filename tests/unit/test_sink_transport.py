"""What the HTTP sink keeps of an endpoint's answer (pure; no network)."""

from __future__ import annotations

from connectors.http_sink.transport import REDIRECT_REFUSED, excerpt


def test_a_refusal_keeps_its_status_and_the_first_200_characters_of_the_body() -> None:
    assert (
        excerpt(422, b'{"error": "unknown deceased"}') == 'HTTP 422: {"error": "unknown deceased"}'
    )
    assert excerpt(500, b"x" * 10_000) == "HTTP 500: " + "x" * 200


def test_a_body_that_is_not_utf8_is_kept_readable() -> None:
    assert (
        excerpt(502, b"\x00\xff\xfe<<bad gateway>>\x80")
        == "HTTP 502: \x00\ufffd\ufffd<<bad gateway>>\ufffd"
    )


def test_a_redirect_says_it_was_not_followed_and_not_where_it_pointed() -> None:
    assert excerpt(302, b"<a href='https://elsewhere.example/?token=abc'>moved</a>") == (
        f"HTTP 302: {REDIRECT_REFUSED}"
    )
