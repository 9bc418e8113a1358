"""PII redaction: each detector, its validators, consistent typed placeholders, the prefilter."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from arena.export.cleaning import Cleaner, CleanerConfig
from arena.export.pii import PII_PREFILTER, PII_PREFILTERS, Placeholders, Redactor, luhn_valid
from arena.identity import VisitorIdentity


def redact(*texts: str) -> list[str]:
    return Redactor().redact_conversation(list(texts))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to john.doe+news@mail.example.co.uk today", "write to EMAIL_1 today"),
        ("call +1 (415) 555-0134 now", "call PHONE_1 now"),
        ("call 415-555-0199 or 0044 20 7946 0958", "call PHONE_1 or PHONE_2"),
        ("card 4111 1111 1111 1111 exp", "card CARD_1 exp"),
        ("card 4111-1111-1111-1111", "card CARD_1"),
        ("host 192.168.10.20, port 22", "host IP_1, port 22"),
        ("v6 2001:db8::8a2e:370:7334 here", "v6 IP_1 here"),
        ("clone https://bob:s3cret@git.example.com/repo.git", "clone URL_1"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx12", "key SECRET_1"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl ok", "token SECRET_1 ok"),
        ("Hello, my name is Maria Gonzalez.", "Hello, my name is NAME_1."),
        ("Dear Dr. Alice Wong, thanks", "Dear Dr. NAME_1, thanks"),
    ],
)
def test_each_kind_of_pii_gets_a_typed_placeholder(text: str, expected: str) -> None:
    assert redact(text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "pi is 3.14159265 and e is 2.71828",
        "the war lasted 1939-1945, see 2024-01-15",
        "version 1.2.3.4.5 of the tool",
        "not a card 4111 1111 1111 1112",
        "time 12:30:45 and ratio 3:2",
        "I am Happy to help, I'm Sorry",
        "std::vector<int> v; a::b::c",
        "sum is 1234567",
        "a sha of text: thisisjustaverylongwordwithoutanydigitsatall",
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert redact(text) == [text]


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112")


def test_placeholders_are_consistent_within_a_conversation() -> None:
    placeholders = Placeholders()
    out = Redactor().redact_conversation(
        [
            "I'm Carla Diaz, mail carla@example.com or CARLA@EXAMPLE.COM; backup x@example.net",
            "Sure Carla, I will write to carla@example.com. Carla Diaz is noted.",
        ],
        placeholders,
    )
    assert out == [
        "I'm NAME_1, mail EMAIL_1 or EMAIL_1; backup EMAIL_2",
        "Sure NAME_1, I will write to EMAIL_1. NAME_1 is noted.",
    ]
    assert placeholders.counts == {"NAME": 1, "EMAIL": 2}


def test_signed_cookie_values_are_redacted() -> None:
    identity = VisitorIdentity("secret")
    cookies = [identity.new_cookie() for _ in range(20)]
    for cookie in cookies:
        assert redact(f"my cookie is {cookie} ok") == ["my cookie is SECRET_1 ok"]


def test_prefilter_matches_every_text_a_detector_fires_on() -> None:
    samples = [
        "a@b.io",
        "x 10.0.0.1",
        "fe80::1",
        "+49 30 1234567",
        "sk-abcdefghijklmnopqrstu",
        "Call me Ishmael",
        "https://u:p@h.example",
        "plain words only",
    ]
    hits = pc.match_substring_regex(pa.array(samples), PII_PREFILTER).to_pylist()
    fired = [bool(Redactor().find_spans(text, Placeholders())) for text in samples]
    assert all(hit for hit, did in zip(hits, fired, strict=True) if did)
    assert hits[-1] is False
    for pattern in PII_PREFILTERS.values():
        re.compile(pattern)  # every RE2 prefilter is valid Python regex too


def test_cleaner_redacts_a_battle_consistently_across_both_sides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cleaner = Cleaner(CleanerConfig(moderation="off"))
    prompt = "My email is dana@example.com, what should I do?"
    side_a = (["user", "assistant"], [prompt, "Do not share dana@example.com."])
    side_b = (["user", "assistant"], [prompt, "Fine."])
    plain = (["user"], ["Bonjour, je cherche une recette de soupe à l'oignon pour ce soir avec mes amis."])
    cleaned, _ = cleaner.clean([[side_a, side_b], [plain]])
    assert cleaned[0].contents == [
        ["My email is EMAIL_1, what should I do?", "Do not share EMAIL_1."],
        ["My email is EMAIL_1, what should I do?", "Fine."],
    ]
    assert cleaned[0].redacted and not cleaned[1].redacted
    assert cleaned[1].language == "French"
