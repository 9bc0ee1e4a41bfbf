"""Finding personal data in text, and masking it.

Kinds found: e-mail addresses, phone numbers, payment card numbers (Luhn-checked), IBANs (ISO 13616 mod-97
checked), IPv4/IPv6 addresses, national-ID-like numbers (US SSN, UK NINO, Spanish DNI/NIE and French NIR with their
check characters, Italian codice fiscale, Canadian SIN with its Luhn check) and, optionally, person names through
spaCy's named-entity recogniser. Each kind is a regular expression that finds candidates and, where the number
carries one, a checksum that confirms them: a check digit is what keeps "order 4111 1111 1111 1111" apart from
any sixteen digits, and it makes precision high enough to mask by default on real corpora.

Masking replaces each finding with a placeholder such as `[EMAIL]`, so the text stays readable and a model learns
that something was there without learning what.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from specialize.errors import ConfigError

KINDS = ("email", "iban", "card", "national_id", "ip", "phone", "name")  # also the priority on overlaps

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\d.,-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b", re.IGNORECASE)
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\d]|\.\d)"
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})"
    r"(?![\w:])|(?<![\w:])::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}(?![\w:])"
)
# Phones: "+CC" international forms, North American (555) 123-4567 / 1-555-123-4567, and national numbers that
# start with a trunk 0 (07700 900123, 06 12 34 56 78, 030 1234567). Separators are single spaces, dots or dashes.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,2}(?:[ .-]?\d{2,5}){1,4}"
    r"|(?:1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|(?:1[.-])?\d{3}([.-])\d{3}\1\d{4}"
    r"|0\d{1,4}(?:[ .-]\d{2,8}){1,4}"
    r")(?![\w]|[.,]\d)"
)
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SSN_LABELLED = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{1,3}(\d{9})\b")
_NINO = re.compile(
    r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_DNI = re.compile(r"\b([XYZ]|\d)(\d{7})-?([A-Z])\b")
_NIR = re.compile(
    r"(?<!\d)([12])[ ]?(\d{2})[ ]?(0[1-9]|1[0-2]|[2-9]\d)[ ]?(\d[\dAB])[ ]?(\d{3})[ ]?(\d{3})[ ]?"
    r"(\d{2})(?!\d)"
)
_CODICE_FISCALE = re.compile(r"\b[A-Z]{6}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z]\b")
_SIN = re.compile(r"(?<![\d-])\d{3}([- ])\d{3}\1\d{3}(?![\d-])")

# IBAN lengths by country (ISO 13616 registry), so that a following capitalised word is not read as part of it.
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VG": 24,
    "XK": 20,
}


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and its character span in the text."""

    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    """The Luhn check of card numbers and Canadian SINs."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers; the remainder by 97 is 1."""
    if not (15 <= len(iban) <= 34) or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    number = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(number) % 97 == 1


def _emails(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _EMAIL.finditer(text)]


def _cards(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _CARD.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        groups = [len(g) for g in re.split(r"[ -]", raw)]
        # Printed card numbers are grouped 4-4-4-4(-3) or, for Amex and Diners, 4-6-5 / 4-6-4.
        grouped = len(groups) == 1 or all(n == 4 for n in groups[:-1]) or groups in ([4, 6, 5], [4, 6, 4])
        if 13 <= len(digits) <= 19 and len(set(re.sub(r"\d", "", raw))) <= 1 and grouped and luhn_ok(digits):
            out.append(m.span())
    return out


def _ibans(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _IBAN.finditer(text):
        raw = m.group().upper()
        compact = raw.replace(" ", "")
        length = IBAN_LENGTHS.get(compact[:2], len(compact))
        if len(compact) < length:
            continue
        # Cut at the country's length, counting only alphanumerics: "... 3000 LOAN" must not swallow LOAN.
        kept, end = 0, m.start()
        for i, ch in enumerate(m.group()):
            kept += ch != " "
            if kept == length:
                end = m.start() + i + 1
                break
        if iban_ok(compact[:length]):
            out.append((m.start(), end))
    return out


_SECTION_BEFORE = re.compile(
    r"(?i)(?:sections?|clauses?|articles?|paragraphs?|para|§|items?|schedules?|exhibits?|"
    r"annex|appendix|chapters?|rules?|parts?)\W{0,3}$"
)
_IP_CONTEXT_BEFORE = re.compile(
    r"(?i)\b(?:ip|ips|ipv4|address(?:es)?|host|server|network|gateway|dns|router|subnet|"
    r"ping|connect(?:ed|ion)?|log(?:ged)?|from|proxy|vpn)\b\W*(?:\w+\W+){0,3}$"
)


def _is_numbering(text: str, start: int, end: int) -> bool:
    """Contracts number clauses like IPv4 addresses ("Section 11.1.1.4", "13.2.3.1 the Transferee ...")."""
    if any(int(octet) >= 100 for octet in text[start:end].split(".")):
        return False
    before = text[max(0, start - 40) : start]
    if _IP_CONTEXT_BEFORE.search(before):
        return False
    if _SECTION_BEFORE.search(before[-25:]):
        return True
    opens_clause = re.search(r"(?:^|[\n;:.)>\d]|\band|\bor)\s*$", before) is not None
    return opens_clause and re.match(r" +[A-Za-z(]", text[end : end + 3]) is not None


def _ips(text: str) -> list[tuple[int, int]]:
    out = [m.span() for m in _IPV4.finditer(text) if not _is_numbering(text, *m.span())]
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if candidate.count(":") < 2 or sum(c.isdigit() or c in "abcdefABCDEF" for c in candidate) < 4:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        out.append(m.span())
    return out


def _phones(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _PHONE.finditer(text):
        raw = m.group()
        digits = sum(ch.isdigit() for ch in raw)
        if not 9 <= digits <= 15:
            continue
        if re.fullmatch(r"\d{4}[.-]\d{2}[.-]\d{2}|\d{2}[.-]\d{2}[.-]\d{4}", raw):
            continue  # a date
        if raw[0] == "0" and " " not in raw and not re.search(r"^0\d{1,4}[.-]\d{3,8}(?:[.-]\d{2,4})?$", raw):
            continue
        out.append(m.span())
    return out


def _dni_ok(m: re.Match[str]) -> bool:
    first, rest, letter = m.groups()
    number = int(str("XYZ".index(first)) + rest) if first in "XYZ" else int(first + rest)
    return "TRWAGMYFPDXBNJZSQVHLCKE"[number % 23] == letter


def _nir_ok(m: re.Match[str]) -> bool:
    sex, year, month, dept, commune, order, key = m.groups()
    dept = dept.replace("2A", "19").replace("2B", "18")
    if not dept.isdigit():
        return False
    number = int(sex + year + month + dept + commune + order)
    return 97 - number % 97 == int(key)


def _national_ids(text: str) -> list[tuple[int, int]]:
    out = [m.span() for m in _SSN.finditer(text)]
    out += [m.span(1) for m in _SSN_LABELLED.finditer(text)]
    out += [m.span() for m in _NINO.finditer(text)]
    out += [m.span() for m in _DNI.finditer(text) if _dni_ok(m)]
    out += [m.span() for m in _NIR.finditer(text) if _nir_ok(m)]
    out += [m.span() for m in _CODICE_FISCALE.finditer(text)]
    out += [m.span() for m in _SIN.finditer(text) if luhn_ok(re.sub(r"\D", "", m.group()))]
    return out


_HAS_DIGIT = re.compile(r"\d")
# Cheap tests that rule a kind out before its regular expressions run (most text has no '@' and few digits).
_MAY_HOLD: dict[str, Callable[[str], bool]] = {
    "email": lambda t: "@" in t,
    "ip": lambda t: ("." in t or ":" in t) and _HAS_DIGIT.search(t) is not None,
    **{kind: lambda t: _HAS_DIGIT.search(t) is not None for kind in ("iban", "card", "national_id", "phone")},
}
_DETECTORS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "email": _emails,
    "iban": _ibans,
    "card": _cards,
    "national_id": _national_ids,
    "ip": _ips,
    "phone": _phones,
}


class PiiScanner:
    """Finds and masks personal data; `names=True` adds spaCy's PERSON entities (loaded once, on first use)."""

    def __init__(self, names: bool = False) -> None:
        self.names = names
        self._nlp: Any = None
        if names:
            self._nlp = _load_spacy()
        self._cached = functools.lru_cache(maxsize=8192)(self._find)

    def find(self, text: str) -> list[Finding]:
        """Every finding in `text`, in order, never overlapping (on overlap the earlier kind in KINDS wins)."""
        # Paragraph by paragraph, cached: task instructions repeated on every row are scanned once. No kind of
        # personal data spans a blank line.
        out, pos = [], 0
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                out += [Finding(f.kind, f.start + pos, f.end + pos) for f in self._cached(paragraph)]
            pos += len(paragraph) + 2
        return out

    def _find(self, text: str) -> tuple[Finding, ...]:
        found = [
            Finding(kind, a, b)
            for kind, detect in _DETECTORS.items()
            if _MAY_HOLD[kind](text)
            for a, b in detect(text)
        ]
        if self._nlp is not None:
            found += [
                Finding("name", e.start_char, e.end_char)
                for e in self._nlp(text).ents
                if e.label_ == "PERSON"
            ]
        chosen: list[Finding] = []
        for f in sorted(found, key=lambda f: (KINDS.index(f.kind), f.start - f.end, f.start)):
            if all(f.end <= c.start or f.start >= c.end for c in chosen):
                chosen.append(f)
        return tuple(sorted(chosen, key=lambda f: f.start))

    def mask(self, text: str, findings: list[Finding] | None = None) -> str:
        """`text` with every finding replaced by its placeholder, e.g. `[EMAIL]`."""
        findings = self.find(text) if findings is None else findings
        parts, pos = [], 0
        for f in findings:
            parts += [text[pos : f.start], placeholder(f.kind)]
            pos = f.end
        return "".join(parts) + text[pos:]


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


def _load_spacy() -> Any:
    try:
        import spacy

        return spacy.load("en_core_web_sm", disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    except (ImportError, OSError) as exc:
        raise ConfigError(
            f"data.pii.names needs spaCy and its English model ({type(exc).__name__}: {exc}); install them with "
            "`pip install spacy && python -m spacy download en_core_web_sm`, or set data.pii.names: false"
        ) from None
