"""PII redaction for the public datasets: typed placeholders, consistent within a conversation.

What is found and how (all offline, all regular expressions plus validators, because the export
must clean ≥10,000 conversations/s on two cores and a neural NER model runs ~100x slower):

- ``EMAIL``: RFC-ish ``local@domain.tld``.
- ``URL``: URLs that carry credentials (``scheme://user:password@host``), replaced whole.
- ``IP``: IPv4 and IPv6 addresses, validated with :mod:`ipaddress`.
- ``CARD``: 13-19 digit card numbers (spaces/dashes allowed) that pass the Luhn check.
- ``PHONE``: 7-15 digit numbers written with a leading ``+``/``00`` or with separators;
  ISO dates and plain digit runs are left alone.
- ``SECRET``: API keys, JWTs and other long random-looking tokens (signed cookies, hex keys).
- ``NAME``: person names introduced by a cue ("my name is", "I'm", "call me", "Mr.",
  "Dr.", "Dear", "Regards,", "Sincerely,"...). Once found, every later whole-word occurrence
  of that name in the same conversation is replaced too, so an assistant echoing the name
  does not leak it. Names without such a cue are *not* detected; the dataset card says so.

The same value gets the same placeholder everywhere in one conversation (or one battle, whose
two sides share prompts): the first e-mail seen is ``EMAIL_1``, the second distinct one
``EMAIL_2``, and so on.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_NAME_CUES = (
    "My name is",
    "my name is",
    "My name's",
    "my name's",
    "I am",
    "I'm",
    "Call me",
    "call me",
    "named",
    "Name:",
    "name:",
    "Mr",
    "Mr.",
    "Mrs",
    "Mrs.",
    "Ms",
    "Ms.",
    "Miss",
    "Dr",
    "Dr.",
    "Prof",
    "Prof.",
    "Dear",
    "Hi",
    "Hello",
    "Regards,",
    "Sincerely,",
    "Thanks,",
    "Cheers,",
    "Best,",
)
_CUE_ALTERNATION = "|".join(re.escape(cue) for cue in sorted(_NAME_CUES, key=len, reverse=True))

_URL_WITH_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,15}://[^\s/@:]+:[^\s/@]*@[^\s]+", re.ASCII)
_EMAIL = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b", re.ASCII
)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9.]*[0-9])", re.ASCII)
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])", re.ASCII)
# A digit run with optional separators; classified as card or phone by the validators below.
_NUMBER = re.compile(r"(?<![\w.\-+])(?:\+|00)?\(?[0-9][0-9 \-.()]{5,22}[0-9](?![\w]|\.[0-9])", re.ASCII)
_SECRET = re.compile(
    r"(?<![\w\-+/=.])(?:sk-[A-Za-z0-9_\-]{16,}|eyJ[\w\-]+\.[\w\-]+\.[\w\-]+|[A-Za-z0-9_\-+/=.]{32,})(?![\w\-+/=])",
    re.ASCII,
)
_NAME_CUE = re.compile(
    r"(?<![\w.])(?:" + _CUE_ALTERNATION + r")[ \t]+(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?[ \t]+)?"
    r"([A-Z][a-z]{1,20}(?:[ \t]+[A-Z][a-z]{1,20}){0,2})\b",
    re.ASCII,
)
# RE2 patterns (run by Arrow over a whole batch, about a microsecond per message), one per
# detector family: each matches every text in which that family's Python detector could fire,
# so the exact (slower) detectors run only where their prefilter matched.
PII_PREFILTERS: dict[str, str] = {
    "at": r"[A-Za-z0-9._%+\-]@[A-Za-z0-9\-]+\.|://[^\s]*@",
    "ipv4": r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",
    "ipv6": r":[0-9A-Fa-f]{0,4}:",
    "number": r"[0-9][0-9 \-.()]{5,22}[0-9]",
    "secret": r"sk-[A-Za-z0-9_\-]{16}|eyJ[A-Za-z0-9_\-]+\.|[A-Za-z0-9_\-+/=.]{32}",
    "name": r"(?:" + _CUE_ALTERNATION + r")[ \t]+[A-Z]",
}
PII_PREFILTER = "|".join(PII_PREFILTERS.values())
ALL_DETECTORS = frozenset(PII_PREFILTERS)
# Capitalised words that follow a cue without being names ("I am Happy", "Hi There").
_NOT_NAMES = frozenset(
    "I A An The This That It He She We They You There Here Sorry Happy Glad Sure Not Just Very So "
    "Good Fine Great Okay Ok Yes No All Everyone Everybody Team Sir Madam Chat ChatGPT Assistant "
    "Bot AI Thanks Thank Please Hello Hi Hey Dear Again Back Also Still Now Today Tomorrow "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday English French German Spanish "
    "Chinese Japanese Russian Python Java Rust Go Looking Trying Working Going Writing Using "
    "New Old Interested Curious Ready Done Able Unable Confused Tired Bored Excited What How Why "
    "Can Could Would Should Will Write Tell Give Make Explain Create Mr Mrs Ms Miss Dr Prof".split()
)
_DATE_LIKE = re.compile(
    r"^[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}$|^[0-9]{1,2}[-./][0-9]{1,2}[-./][0-9]{2,4}$"
)
_NUMBER_GROUPS = re.compile(r"[ \-.()]+")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


@dataclass
class Placeholders:
    """Typed placeholders for one conversation: the same value always maps to the same name."""

    by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def get(self, kind: str, value: str) -> str:
        key = (kind, value)
        placeholder = self.by_value.get(key)
        if placeholder is None and kind == "NAME":
            placeholder = self._known_name_part(value)
        if placeholder is None:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            placeholder = f"{kind}_{self.counts[kind]}"
            self.by_value[key] = placeholder
            if kind == "NAME":
                self.names.append(value)
        return placeholder

    def _known_name_part(self, value: str) -> str | None:
        """ "John" after "John Smith" (or the reverse) is the same person: reuse the placeholder."""
        words = set(value.split())
        for name in self.names:
            parts = set(name.split())
            if words <= parts or parts <= words:
                placeholder = self.by_value[("NAME", name)]
                self.by_value[("NAME", value)] = placeholder
                return placeholder
        return None

    @property
    def any(self) -> bool:
        return bool(self.by_value)


def _classify_number(candidate: str) -> tuple[str, str] | None:
    """``("CARD"|"PHONE", canonical digits)`` for a digit run, or ``None`` when it is neither.

    A phone number needs 7-15 digits and either an international prefix (``+``, ``00``, ``(``)
    or at least three digit groups of 2-4 digits ("415 555 0199"), which leaves decimals, year
    ranges ("2019-2020"), dates and version numbers alone.
    """
    digits = "".join(c for c in candidate if c.isdigit())
    if 13 <= len(digits) <= 19 and "." not in candidate and "(" not in candidate and luhn_valid(digits):
        return "CARD", digits
    if not 7 <= len(digits) <= 15 or _DATE_LIKE.match(candidate):
        return None
    groups = [g for g in _NUMBER_GROUPS.split(candidate.lstrip("+")) if g]
    if candidate.startswith(("+", "00", "(")) and len(groups) >= 2:
        return "PHONE", digits
    if len(groups) >= 3 and all(2 <= len(g) <= 4 for g in groups[1:]) and len(groups[0]) <= 4:
        return "PHONE", digits
    return None


def _looks_random(token: str) -> bool:
    """Letters mixed with digits, or a long mixed-case run: keys and signed cookies, not words."""
    has_alpha = any(c.isalpha() for c in token)
    if any(c.isdigit() for c in token):
        return has_alpha
    return len(token) >= 40 and token != token.lower() and token != token.upper()


def _valid_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    return True


class Redactor:
    """Finds PII in the messages of one conversation and replaces it with typed placeholders."""

    def find_spans(
        self, text: str, placeholders: Placeholders, detectors: frozenset[str] = ALL_DETECTORS
    ) -> list[tuple[int, int, str]]:
        """``(start, end, placeholder)`` for every PII span in ``text``, non-overlapping.

        ``detectors`` limits the search to the families whose prefilter matched the text.
        """
        spans: list[tuple[int, int, str]] = []
        taken: list[tuple[int, int]] = []

        def add(start: int, end: int, kind: str, value: str) -> None:
            if any(start < e and s < end for s, e in taken):
                return
            taken.append((start, end))
            spans.append((start, end, placeholders.get(kind, value)))

        if "at" in detectors and "@" in text:
            if "://" in text:
                for m in _URL_WITH_CREDENTIALS.finditer(text):
                    add(m.start(), m.end(), "URL", m.group())
            for m in _EMAIL.finditer(text):
                add(m.start(), m.end(), "EMAIL", m.group().lower())
        for m in _SECRET.finditer(text) if "secret" in detectors else ():
            token = m.group()
            if _looks_random(token):
                add(m.start(), m.end(), "SECRET", token)
        for m in _IPV4.finditer(text) if "ipv4" in detectors else ():
            if _valid_ip(m.group()):
                add(m.start(), m.end(), "IP", m.group())
        if "ipv6" in detectors:
            for m in _IPV6.finditer(text):
                if m.group().count(":") >= 2 and _valid_ip(m.group()):
                    add(m.start(), m.end(), "IP", m.group().lower())
        for m in _NUMBER.finditer(text) if "number" in detectors else ():
            candidate = m.group().rstrip(" -.(")
            kind_value = _classify_number(candidate)
            if kind_value:
                add(m.start(), m.start() + len(candidate), kind_value[0], kind_value[1])
        for m in _NAME_CUE.finditer(text) if "name" in detectors else ():
            words = []
            for word in m.group(1).split():
                if word in _NOT_NAMES:
                    break
                words.append(word)
            if words:
                name = " ".join(words)
                start = m.start(1)
                add(start, text.index(words[-1], start) + len(words[-1]), "NAME", name)
        return spans

    def redact_conversation(
        self,
        texts: list[str],
        placeholders: Placeholders | None = None,
        detectors: list[frozenset[str]] | None = None,
    ) -> list[str]:
        """The texts with PII replaced; ``placeholders`` (shared across calls) records what was found.

        ``detectors[i]`` (default: all) names the detector families to run on ``texts[i]``.
        """
        placeholders = placeholders if placeholders is not None else Placeholders()
        chosen = detectors or [ALL_DETECTORS] * len(texts)
        found = [
            self.find_spans(text, placeholders, kinds) for text, kinds in zip(texts, chosen, strict=True)
        ]
        out = [_apply(text, spans) for text, spans in zip(texts, found, strict=True)]
        if placeholders.names:
            out = [_replace_known_names(text, placeholders) for text in out]
        return out


def _apply(text: str, spans: list[tuple[int, int, str]]) -> str:
    if not spans:
        return text
    pieces = []
    cursor = 0
    for start, end, placeholder in sorted(spans):
        pieces.append(text[cursor:start])
        pieces.append(placeholder)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _replace_known_names(text: str, placeholders: Placeholders) -> str:
    """Replace later whole-word mentions of names found by a cue (full name, then each part)."""
    for name in placeholders.names:
        if name.split()[0] not in text:
            continue
        placeholder = placeholders.get("NAME", name)
        parts = [name, *[p for p in name.split() if len(p) > 2 and p not in _NOT_NAMES]]
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in parts) + r")\b")
        text = pattern.sub(placeholder, text)
    return text
