"""Secrets out of every text (mailvault/redact.py): masked where quoted whole, and a server's
reply to a login withheld when it may quote a secret in any form."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from mailvault.errors import AuthenticationError
from mailvault.redact import WITHHELD, may_quote, redact, register_secret, screen

SECRET = 'Tr0ub4dör&3"x\\y'


@pytest.mark.parametrize(
    "echo",
    [
        SECRET,
        SECRET.upper(),
        quote(SECRET, safe=""),
        SECRET.encode().hex(),
        base64.b64encode(SECRET.encode()).decode(),
        SECRET.encode().decode("latin-1"),  # UTF-8 read as Latin-1
        SECRET.encode().decode("ascii", "replace"),  # accents lost
        SECRET[:6],  # cut short
        SECRET[6:],  # the rest, on a second line
        repr(SECRET.encode()),
    ],
)
def test_a_reply_quoting_the_secret_in_any_form_is_withheld(echo: str) -> None:
    register_secret(SECRET)
    assert may_quote(f"-ERR [AUTH] bad password {echo}")
    assert screen(f"-ERR {echo}") == WITHHELD


def test_a_reply_not_quoting_it_is_kept() -> None:
    register_secret(SECRET)
    for text in ("[AUTH] invalid credentials", "[SYS/TEMP] try later", "maildrop locked"):
        assert not may_quote(text) and screen(text) == text


def test_errors_mask_the_secret_wherever_it_is_quoted_whole() -> None:
    register_secret(SECRET)
    error = AuthenticationError(f"server said: {SECRET} / {quote(SECRET, safe='')}")
    assert SECRET not in str(error) and quote(SECRET, safe="") not in str(error)
    assert str(error) == "server said: **** / ****"


def test_a_short_secret_is_not_masked_in_all_text_but_still_screened() -> None:
    """Masking every "a" garbles messages and gives the password away by the gaps it leaves."""
    register_secret("a")
    assert redact("mailvault: fetched 1 accounts") == "mailvault: fetched 1 accounts"
    assert may_quote("-ERR wrong password: a")
