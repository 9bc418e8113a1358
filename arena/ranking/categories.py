"""Categories of battles, from the visitor's prompts, computed once per battle and stored with it.

Criteria (simple on purpose, so anyone can audit a tag):

* ``language:<iso>``: lingua's detection of the concatenated user turns (ISO 639-1, e.g. ``language:en``);
  ``language:unknown`` when lingua is unsure.
* ``coding``: a fenced code block, a line that looks like code (``def``, ``import``, ``#include``,
  ``SELECT ... FROM``, ``function``, ``class``...), or a programming-language/tool name.
* ``long_query``: the user turns hold at least 500 tokens (words and punctuation marks).
* ``multi_turn``: the visitor sent more than one turn.
* ``hard_prompts``: at least 3 of 5 signals: specific (>= 25 words), problem-solving verb
  (prove, derive, optimize, implement, debug...), several constraints or sub-questions,
  technical content (numbers with operators or units, formulas, code), domain vocabulary.

Every battle is also in ``overall``. :func:`tag_battle` returns a JSON-ready dict with these
tags; :func:`in_category` filters a battles table by its stored ``categories`` lists.
"""

from __future__ import annotations

import re

import pandas as pd
from lingua import Language, LanguageDetector, LanguageDetectorBuilder

LONG_QUERY_TOKENS = 500
HARD_PROMPT_MIN_SIGNALS = 3
# Languages lingua chooses among: the ones arena visitors write most. Each adds its n-gram models
# to the (one-off, seconds-long) load, so the list stays short; others come out as the nearest one.
DETECTED_LANGUAGES = (
    Language.ENGLISH, Language.CHINESE, Language.RUSSIAN, Language.SPANISH, Language.GERMAN,
    Language.FRENCH, Language.JAPANESE, Language.KOREAN, Language.PORTUGUESE, Language.ITALIAN,
    Language.POLISH, Language.VIETNAMESE,
)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_CODE_FENCE = re.compile(r"```")
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|#include|function\b|public static|const |let |var |"
    r"SELECT\b.*\bFROM\b|for\s*\(|while\s*\(|print\(|console\.log|return\b)",
    re.MULTILINE | re.IGNORECASE,
)
_CODE_WORDS = re.compile(
    r"\b(python|javascript|typescript|java|c\+\+|c#|rust|golang|kotlin|swift|sql|regex|bash|shell script|"
    r"html|css|react|numpy|pandas|pytorch|code|coding|function|compile|compiler|debug|stack trace|"
    r"algorithm|api|json|dockerfile|git)\b",
    re.IGNORECASE,
)
_PROBLEM_VERBS = re.compile(
    r"\b(prove|derive|solve|calculate|compute|optimi[sz]e|implement|design|debug|analy[sz]e|"
    r"compare|evaluate|explain why|step by step|estimate|refactor)\b",
    re.IGNORECASE,
)
_CONSTRAINTS = re.compile(
    r"\b(must|should|without|at least|at most|exactly|only|ensure|given that|assume)\b|\?|^\s*(\d+[.)]|[-*])\s",
    re.IGNORECASE | re.MULTILINE,
)
_TECHNICAL = re.compile(r"\d+\s*[-+*/^=<>]\s*\d+|\d+\s*(ms|kb|mb|gb|%|kg|km|hz)\b|[∑∫√π≤≥]|```", re.IGNORECASE)
_DOMAIN_WORDS = re.compile(
    r"\b(theorem|lemma|integral|derivative|matrix|eigen\w*|probability|statistic\w*|protein|enzyme|"
    r"molecule|quantum|thermodynamic\w*|economics|legal|contract|diagnos\w*|clinical|circuit|"
    r"compiler|kernel|database|latency|complexity|gradient|regression|hypothesis|asymptotic)\b",
    re.IGNORECASE,
)


def build_language_detector() -> LanguageDetector:
    """A lingua detector over :data:`DETECTED_LANGUAGES`; build once and pass it to :func:`tag_battle`."""
    return LanguageDetectorBuilder.from_languages(*DETECTED_LANGUAGES).build()


def detect_language(text: str, detector: LanguageDetector) -> str:
    """ISO 639-1 code of ``text``'s language, or ``unknown``."""
    language = detector.detect_language_of(text) if text.strip() else None
    return language.iso_code_639_1.name.lower() if language is not None else "unknown"


def is_coding(text: str) -> bool:
    """Whether a prompt is about code (see the module docstring)."""
    return bool(_CODE_FENCE.search(text) or _CODE_LINE.search(text) or _CODE_WORDS.search(text))


def hard_prompt_signals(text: str) -> int:
    """How many of the five hard-prompt signals ``text`` shows."""
    return sum(
        (
            len(re.findall(r"\w+", text)) >= 25,
            bool(_PROBLEM_VERBS.search(text)),
            len(_CONSTRAINTS.findall(text)) >= 2,
            bool(_TECHNICAL.search(text)),
            bool(_DOMAIN_WORDS.search(text)),
        )
    )


def tag_battle(user_turns: list[str], detector: LanguageDetector) -> dict[str, object]:
    """Tags of one battle from the visitor's turns: language, flags and the list of categories."""
    text = "\n".join(user_turns)
    language = detect_language(text, detector)
    flags = {
        "coding": is_coding(text),
        "long_query": len(_TOKEN.findall(text)) >= LONG_QUERY_TOKENS,
        "multi_turn": len(user_turns) > 1,
        "hard_prompts": hard_prompt_signals(text) >= HARD_PROMPT_MIN_SIGNALS,
    }
    categories = ["overall", f"language:{language}", *[name for name, on in flags.items() if on]]
    return {"language": language, **flags, "categories": categories}


def in_category(battles: pd.DataFrame, category: str, column: str = "categories") -> pd.DataFrame:
    """Battles whose stored category list contains ``category`` (``overall`` keeps all)."""
    if category == "overall":
        return battles
    if column not in battles.columns:
        raise ValueError(f"battles table lacks the {column!r} column needed to filter by category")
    mask = battles[column].map(lambda cats: isinstance(cats, list | tuple) and category in cats)
    return battles[mask.to_numpy(bool)]
