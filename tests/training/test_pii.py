"""The PII rule set (training/pii.py) on realistic strings: what must go, and what must stay."""

from __future__ import annotations

import pytest

from training.pii import iban_ok, luhn, scrub

SCRUBBED = [
    ("Mail me at jane.doe+news@example.co.uk tomorrow", "Mail me at [EMAIL] tomorrow", "email"),
    ("contact: o'brien@mail-server.example.org.", "contact: [EMAIL].", "email"),
    ("My card is 4111 1111 1111 1111, exp 12/29", "My card is [CARD], exp 12/29", "card"),
    ("Pay with 5500-0000-0000-0004 please", "Pay with [CARD] please", "card"),
    ("amex 378282246310005", "amex [CARD]", "card"),
    ("IBAN: DE89 3704 0044 0532 0130 00 (Commerzbank)", "IBAN: [IBAN] (Commerzbank)", "iban"),
    ("send it to GB82WEST12345698765432", "send it to [IBAN]", "iban"),
    ("Call +44 20 7946 0958 after six", "Call [PHONE] after six", "phone"),
    ("my number: (415) 555-2671", "my number: [PHONE]", "phone"),
    ("ring 030 1234 5678 or 555-867-5309", "ring [PHONE] or [PHONE]", "phone"),
    ("French mobile 06 12 34 56 78.", "French mobile [PHONE].", "phone"),
    ("+1-202-555-0143", "[PHONE]", "phone"),
    ("SSN 078-05-1120 on file", "SSN [SSN] on file", "ssn"),
    ("server at 192.168.1.20 is down", "server at [IP] is down", "ipv4"),
]

KEPT = [
    "Order 1234567890123456 shipped",  # 16 digits failing Luhn: an order id, not a card
    "The meeting is on 2024-03-15 at 10:30.",
    "It costs 1,299.99 EUR, or 12 x 108.33",
    "Version 3.12.1 fixed it; see RFC 5322 and ISO 8601.",
    "The year 1969, the number 42 and 3.14159",
    "DE89 3704 0044 0532 0130 01",  # an IBAN shape with a wrong check: left
    "at 999.1.1.1 nothing",  # not an address
    "SSN-like 000-12-3456 is invalid",
    "Call me @alice on the forum",
]


@pytest.mark.parametrize(("text", "want", "rule"), SCRUBBED)
def test_personal_data_is_replaced_by_its_placeholder(text: str, want: str, rule: str) -> None:
    got, found = scrub(text)
    assert got == want
    assert found.get(rule, 0) >= 1 and sum(found.values()) == want.count("[")


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_numbers_and_words_are_kept(text: str) -> None:
    assert scrub(text) == (text, {})


def test_checksums() -> None:
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_several_kinds_in_one_text_are_all_counted() -> None:
    text = "Jane (jane@example.com, +49 151 23456789) paid with 4242 4242 4242 4242 from 10.0.0.7"
    got, found = scrub(text)
    assert got == "Jane ([EMAIL], [PHONE]) paid with [CARD] from [IP]"
    assert found == {"email": 1, "phone": 1, "card": 1, "ipv4": 1}
