"""Personal data: planted values of every kind are found (recall >= 0.95 per kind) and masking leaves none of them
in the prepared splits; reporting and dropping are counted in the audit."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from specialize.config import DataConfig
from specialize.data import pii as pii_module
from specialize.data import prepare_data, read_prepared
from specialize.data.pii import PiiScanner, iban_ok, luhn_ok
from specialize.errors import ConfigError

RNG = random.Random(7)
IBAN_SHAPES = {
    "DE": "8n10n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "ES": "20n",
    "IT": "1a10n12c",
    "NL": "4a10n",
    "BE": "12n",
    "CH": "5n12c",
    "AT": "16n",
    "PL": "24n",
}


def _luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(str(RNG.randrange(10)) for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def _iban(country: str) -> str:
    shape = IBAN_SHAPES[country]
    bban = ""
    for count, kind in re.findall(r"(\d+)([anc])", shape):
        alphabet = {
            "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "n": "0123456789",
            "c": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        }
        bban += "".join(RNG.choice(alphabet[kind]) for _ in range(int(count)))
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


def _grouped(value: str, size: int = 4, sep: str = " ") -> str:
    return sep.join(value[i : i + size] for i in range(0, len(value), size))


def _dni() -> str:
    number = RNG.randrange(10**7, 10**8)
    return f"{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[number % 23]}"


def _nie(prefix: str) -> str:
    number = RNG.randrange(10**6, 10**7)
    return f"{prefix}{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[int('XYZ'.index(prefix) * 10**7 + number) % 23]}"


def _nir() -> str:
    base = (
        f"{RNG.choice('12')}{RNG.randrange(100):02d}{RNG.randrange(1, 13):02d}{RNG.randrange(1, 96):02d}"
        f"{RNG.randrange(1, 1000):03d}{RNG.randrange(1, 1000):03d}"
    )
    key = 97 - int(base) % 97
    return f"{base[0]} {base[1:3]} {base[3:5]} {base[5:7]} {base[7:10]} {base[10:13]} {key:02d}"


def _sin() -> str:
    digits = _luhn_complete(str(RNG.randrange(1, 8)), 9)
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"


def _planted() -> dict[str, list[str]]:
    cards = [
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "4012888888881881",
        "5105 1051 0510 5100",
        "3530111333300000",
        "2223003122003222",
        "4222222222222",
    ]
    cards += [
        _grouped(_luhn_complete(p, n), 4, s)
        for p, n, s in [
            ("4", 16, " "),
            ("51", 16, "-"),
            ("6011", 16, " "),
            ("4", 16, ""),
            ("55", 16, " "),
            ("4", 19, " "),
            ("37", 15, ""),
            ("4", 16, "-"),
            ("52", 16, ""),
            ("6", 16, " "),
        ]
    ]
    ibans = [_iban(c) for c in IBAN_SHAPES] + [_grouped(_iban(c)) for c in IBAN_SHAPES]
    return {
        "email": [
            "john.doe@example.com",
            "A.Smith+billing@mail.example.co.uk",
            "maria_garcia77@gmail.com",
            "support@fitbit.com",
            "x@y.io",
            "first.last@sub.domain.org",
            "obrien@example.ie",
            "user123@test-mail.net",
            "CAPS@EXAMPLE.COM",
            "jp@example.co.jp",
            "anna.k@uni-berlin.de",
            "li.wei@company.cn",
            "h.ngo@example.vn",
            "team-lead@startup.ai",
            "no.reply@service.example",
            "dr.jones@hospital.org",
            "r2d2@droids.space",
            "bob@robertleight.com",
            "a.b.c.d@e.fr",
            "first_last@x.travel",
        ],
        "phone": [
            "(555) 123-4567",
            "555-123-4567",
            "555.123.4567",
            "+1 555 123 4567",
            "+1-202-555-0147",
            "+44 20 7946 0958",
            "+44 7700 900123",
            "07700 900123",
            "020 7946 0958",
            "+33 6 12 34 56 78",
            "06 12 34 56 78",
            "+49 30 1234567",
            "+49 (0)30 1234 5678",
            "+61 2 9876 5432",
            "+81 3-1234-5678",
            "+91 98765 43210",
            "1-800-778-7879",
            "(212) 555-0199",
            "+358 10 516 0030",
            "+1 (555) 555-5555",
        ],
        "card": cards,
        "iban": ibans,
        "ip": [
            "192.168.1.20",
            "172.16.254.1",
            "203.0.113.45",
            "198.51.100.7",
            "10.0.0.1",
            "8.8.8.8",
            "127.0.0.1",
            "255.255.255.0",
            "100.64.0.10",
            "52.14.88.3",
            "2001:db8::1",
            "fe80::1ff:fe23:4567:890a",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2606:4700:4700::1111",
            "192.0.2.146",
            "81.2.69.160",
            "185.199.108.153",
            "10.10.10.10",
            "172.31.5.250",
            "2001:db8:0:1::42",
        ],
        "national_id": [
            "123-45-6789",
            "078-05-1120",
            "219 09 9999",
            "AB 12 34 56 C",
            "JG103759A",
            "CE 65 43 21 B",
            _dni(),
            _dni(),
            _nie("X"),
            _nie("Y"),
            _nir(),
            _nir(),
            "RSSMRA85T10A562S",
            "BNCGNN70A41H501K",
            _sin(),
            _sin(),
            "046 454 286",
            "536-22-8726",
            "ZX 98 76 54 D",
            "601-23-4567",
        ],
    }


TEMPLATES = [
    "Please update my record: {}. Thanks!",
    "my details are {} if you need them",
    "Contact info ({}) was in the complaint.",
    "Could you check {} for me?",
    "I typed {} into the form and it failed.",
]
CONTEXT = {"ip": "the server IP was {}", "national_id": "my ID number is {}"}


def _sentence(kind: str, value: str, i: int) -> str:
    template = CONTEXT[kind] if kind in CONTEXT and i % 2 else TEMPLATES[i % len(TEMPLATES)]
    return template.format(value)


def test_detection_recall_is_at_least_95_percent_for_every_kind() -> None:
    scanner = PiiScanner()
    recall = {}
    for kind, values in _planted().items():
        found = 0
        for i, value in enumerate(values):
            text = _sentence(kind, value, i)
            start = text.index(value)
            found += any(
                f.kind == kind and f.start <= start and f.end >= start + len(value)
                for f in scanner.find(text)
            )
        recall[kind] = found / len(values)
        assert len(values) >= 20
    assert all(r >= 0.95 for r in recall.values()), recall


@pytest.mark.parametrize(
    "text",
    [
        "On 2023-01-15 the price rose 12.5% to $1,250.00 (EUR 1.099,50) at 12:30:45.",
        "See Section 11.1.1.4 and clauses 13.2.3.1 the Transferee; version 1.2.3 of the app.",
        "Order 1234567 shipped; invoice 2024-0001; 3 ft = 36 in.; ratio 1:2:3.",
        "$<<2000000-400000=1600000>>1600000 and 15 mln euro $ 21.2 mln in 2007-2008.",
        "std::vector<int> and a::b in C++; ISBN 978-3-16-148410-0.",
        "The committee met 12 34 56 times; code ABCD1234 passed.",
    ],
)
def test_ordinary_numbers_are_not_personal_data(text: str) -> None:
    assert PiiScanner().find(text) == []


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # one character short of Germany's 22


def test_mask_replaces_each_finding_with_its_kind() -> None:
    scanner = PiiScanner()

    masked = scanner.mask("Mail a@b.com or call +44 20 7946 0958 from 192.168.0.12.")

    assert masked == "Mail [EMAIL] or call [PHONE] from [IP]."


def _planted_dataset(tmp_path, write_jsonl):
    planted = [(kind, value) for kind, values in _planted().items() for value in values]
    rows = [
        {
            "messages": [
                {"role": "user", "content": _sentence(kind, value, i)},
                {"role": "assistant", "content": f"Noted {i}."},
            ],
            "contact": value,
        }
        for i, (kind, value) in enumerate(planted)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows[::2])
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[1::2])
    return planted, train, validation


def test_masking_leaves_no_planted_value_in_the_prepared_splits(
    tmp_path, tiny_tokenizer, write_jsonl
) -> None:
    planted, train, validation = _planted_dataset(tmp_path, write_jsonl)
    config = DataConfig(
        train=train, validation=validation, pii={"mode": "mask"}, dedupe={"exact": False, "near": False}
    )

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    written = "".join(
        p.read_text(encoding="utf-8")
        for p in (prepared.train_path, prepared.validation_path, prepared.rejects_path)
    )
    compact = re.sub(r"[\s.()-]", "", written)
    leaked = [
        v
        for _, v in planted
        if v in written or (len(re.sub(r"\W", "", v)) >= 9 and re.sub(r"[\s.()-]", "", v) in compact)
    ]
    assert len(leaked) <= 0.05 * len(planted), leaked  # recall >= 0.95 bounds what masking can miss
    audit = json.loads(prepared.audit_path.read_text(encoding="utf-8"))
    assert audit["pii"]["mode"] == "mask"
    assert audit["pii"]["rows"] >= 0.95 * len(planted)
    assert set(audit["pii"]["by_kind"]) == {"email", "phone", "card", "iban", "ip", "national_id"}
    rows = read_prepared(prepared.train_path)
    assert all(r["contact"].startswith("[") for r in rows if r["contact"] not in leaked)  # extra fields too


def test_masking_test_file_leaves_none_of_the_recalled_values(tmp_path, tiny_tokenizer, write_jsonl) -> None:
    """Every value the scanner finds in its sentence is absent from the prepared split: masking misses nothing
    that detection found."""
    planted, train, validation = _planted_dataset(tmp_path, write_jsonl)
    scanner = PiiScanner()
    found = [
        v for i, (k, v) in enumerate(planted) if any(f.kind == k for f in scanner.find(_sentence(k, v, i)))
    ]
    config = DataConfig(train=train, validation=validation, pii={"mode": "mask"}, dedupe={"near": False})

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    written = prepared.train_path.read_text(encoding="utf-8") + prepared.validation_path.read_text(
        encoding="utf-8"
    )
    assert [v for v in found if v in written] == []


def test_report_mode_counts_without_changing_the_text(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    rows = [chat_row(f"question {i}", "answer") for i in range(8)] + [
        chat_row("mail me: a.b@example.com", "ok")
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    prepared = prepare_data(
        DataConfig(train=train, validation_fraction=0.2), tiny_tokenizer, tmp_path / "out"
    )

    audit = json.loads(prepared.audit_path.read_text(encoding="utf-8"))
    assert audit["pii"]["by_kind"] == {"email": 1} and audit["pii"]["rows"] == 1
    assert audit["pii"]["locations"] == [f"{train}:9: email"]
    assert any("data.pii.mode" in w for w in audit["warnings"])
    kept = prepared.train_path.read_text() + prepared.validation_path.read_text()
    assert "a.b@example.com" in kept


def test_drop_mode_rejects_the_row_and_keeps_rejects_free_of_personal_data(
    tmp_path, tiny_tokenizer, write_jsonl, chat_row
) -> None:
    rows = [chat_row(f"question {i}", "answer") for i in range(8)] + [
        chat_row("card 4111 1111 1111 1111", "ok")
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    config = DataConfig(train=train, validation_fraction=0.2, pii={"mode": "drop"})

    prepared = prepare_data(config, tiny_tokenizer, tmp_path / "out")

    (reject,) = read_prepared(prepared.rejects_path)
    assert (reject["kind"], reject["source"]) == ("pii", f"{train}:9")
    assert "card" in reject["reason"]
    assert reject["messages"][0]["content"] == "card [CARD]"
    assert prepared.n_train + prepared.n_validation == 8


def test_names_need_spacy_and_say_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "spacy", None)  # as if spaCy were not installed

    with pytest.raises(ConfigError, match="spacy download en_core_web_sm"):
        PiiScanner(names=True)


def test_names_from_the_recogniser_are_masked(monkeypatch) -> None:
    class Entity:
        def __init__(self, start: int, end: int) -> None:
            self.start_char, self.end_char, self.label_ = start, end, "PERSON"

    class FakeNlp:  # stands in for spaCy's pipeline: finds "Jane Roe"
        def __call__(self, text: str):
            starts = [m.start() for m in re.finditer("Jane Roe", text)]
            return type("Doc", (), {"ents": [Entity(s, s + 8) for s in starts]})()

    monkeypatch.setattr(pii_module, "_load_spacy", FakeNlp)
    scanner = PiiScanner(names=True)

    assert scanner.mask("Jane Roe wrote from jane@roe.org") == "[NAME] wrote from [EMAIL]"
    assert Counter(f.kind for f in scanner.find("Jane Roe, Jane Roe")) == {"name": 2}
