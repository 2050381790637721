"""Personal data scrubbed from text before it can become training data (the curation of feedback).

Pure functions, no I/O. The rule set, applied in this order (an earlier rule's match is not
re-examined by a later one), each match replaced by its placeholder:

- ``email`` -> ``[EMAIL]``: ``local@domain.tld`` (RFC 5322 dot-atom local part, dotted domain,
  a TLD of 2+ letters);
- ``iban`` -> ``[IBAN]``: 2 letters, 2 check digits, 11-30 letters or digits (a space allowed every 4),
  checked by ISO 13616 mod-97 = 1;
- ``card`` -> ``[CARD]``: 13-19 digits, single spaces or dashes between groups, Luhn checksum;
- ``ssn`` -> ``[SSN]``: ``ddd-dd-dddd`` (US), not area 000/666/9xx, group 00 or serial 0000;
- ``phone`` -> ``[PHONE]``: ``+`` and a country code, ``(area)``, a national number with a leading 0,
  or ``ddd-ddd-dddd``; 7-15 digits (E.164); not an ISO date, the SSN shape, or a group that follows
  another group of digits (the tail of an account number);
- ``ipv4`` -> ``[IP]``: a dotted quad, each octet 0-255.

Checksums keep ordinary numbers (order ids, years, prices, ISO dates) in place: a random 16-digit
number passes Luhn one time in ten, a random IBAN-shaped string mod-97 one time in 97. Names and
street addresses are not detected: no rule finds them reliably (a named-entity model would).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    placeholder: str
    check: Callable[[str], bool] = lambda s: True


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def luhn(number: str) -> bool:
    digits = [int(c) for c in _digits(number)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0


def iban_ok(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_ok(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def phone_ok(text: str) -> bool:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{3}-\d{2}-\d{4}", text.strip()):  # an ISO date; the SSN shape
        return False
    return 7 <= len(_digits(text)) <= 15


RULES = (
    Rule("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                             r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"), "[EMAIL]"),
    Rule("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), "[IBAN]", iban_ok),
    Rule("card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), "[CARD]", luhn),
    Rule("ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), "[SSN]", ssn_ok),
    Rule("phone", re.compile(r"(?<![\w+])(?<!\d )(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                             r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
                             r"|0\d{1,4}(?:[ .-]\d{2,4}){1,4}|0\d{9,10}"
                             r"|\d{3}[ .-]\d{3}[ .-]\d{4})(?![\w-])"), "[PHONE]", phone_ok),
    Rule("ipv4", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), "[IP]",
         lambda s: all(int(p) <= 255 for p in s.split("."))),
)  # fmt: skip


def scrub(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with every match of the rules replaced, and how many of each rule were replaced."""
    found: dict[str, int] = {}
    for rule in RULES:

        def replace(m: re.Match[str], rule: Rule = rule) -> str:
            if not rule.check(m.group(0)):
                return m.group(0)
            found[rule.name] = found.get(rule.name, 0) + 1
            return rule.placeholder

        text = rule.pattern.sub(replace, text)
    return text, found
