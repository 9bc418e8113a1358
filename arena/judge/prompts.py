"""Judge prompts: data files (FastChat's ``judge_prompts.jsonl`` shape), never code.

Each prompt carries a *version*: its name plus a hash of its text, so editing a prompt
file invalidates exactly the cached judgments made with the old text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.judge.questions import DataFileError, Question, read_jsonl

SINGLE = "single"
PAIRWISE = "pairwise"

# Which prompt judges what: (kind, reference-guided) -> base name; turn 2 adds "-multi-turn".
PROMPT_NAMES: dict[tuple[str, bool], str] = {
    (SINGLE, False): "single-v1",
    (SINGLE, True): "single-math-v1",
    (PAIRWISE, False): "pair-v2",
    (PAIRWISE, True): "pair-math-v1",
}


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: system message, user template and the verdict format it asks for."""

    name: str
    kind: str
    system_prompt: str
    prompt_template: str
    output_format: str

    @property
    def version(self) -> str:
        """``name@hash`` of everything that shapes the judge's input."""
        digest = hashlib.sha256(
            "\x00".join([self.system_prompt, self.prompt_template, self.output_format]).encode()
        ).hexdigest()[:12]
        return f"{self.name}@{digest}"

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages for the judge, with the template filled in."""
        try:
            user = self.prompt_template.format(**fields)
        except KeyError as exc:
            raise DataFileError(f"judge prompt {self.name!r} needs field {exc.args[0]!r}") from exc
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]


class PromptSet:
    """The judge prompts of one file, by name."""

    def __init__(self, prompts: dict[str, JudgePrompt], source: str):
        self._prompts = prompts
        self.source = source

    @classmethod
    def from_jsonl(cls, path: Path) -> PromptSet:
        prompts: dict[str, JudgePrompt] = {}
        for number, record in read_jsonl(Path(path)):
            where = f"{path}:{number}"
            for key in ("name", "type", "system_prompt", "prompt_template", "output_format"):
                if not isinstance(record.get(key), str):
                    raise DataFileError(f"{where}: judge prompt needs a string {key!r}")
            if record["type"] not in (SINGLE, PAIRWISE):
                raise DataFileError(f"{where}: type must be 'single' or 'pairwise', got {record['type']!r}")
            prompts[record["name"]] = JudgePrompt(
                name=record["name"],
                kind=record["type"],
                system_prompt=record["system_prompt"],
                prompt_template=record["prompt_template"],
                output_format=record["output_format"],
            )
        return cls(prompts, str(path))

    def get(self, name: str) -> JudgePrompt:
        try:
            return self._prompts[name]
        except KeyError:
            raise DataFileError(f"{self.source}: no judge prompt named {name!r}") from None

    def for_question(self, kind: str, question: Question, turn: int) -> JudgePrompt:
        """The prompt MT-bench uses for this kind, question category and turn (1 or 2)."""
        reference_guided = question.needs_reference and question.reference is not None
        name = PROMPT_NAMES[(kind, reference_guided)]
        return self.get(name + ("-multi-turn" if turn == 2 else ""))


def single_fields(question: Question, answer: list[str], turn: int) -> dict[str, str]:
    """Template fields for grading one answer at ``turn`` (turn 2 sees the whole conversation)."""
    fields = {"question": question.turns[0], "answer": answer[0]}
    if turn == 2:
        fields.update(question_1=question.turns[0], question_2=question.turns[1])
        fields.update(answer_1=answer[0], answer_2=answer[1])
    return fields | _reference_fields(question)


def pairwise_fields(
    question: Question, answer_a: list[str], answer_b: list[str], turn: int
) -> dict[str, str]:
    """Template fields for comparing two answers at ``turn``."""
    fields = {"question": question.turns[0], "answer_a": answer_a[0], "answer_b": answer_b[0]}
    if turn == 2:
        fields.update(question_1=question.turns[0], question_2=question.turns[1])
        fields.update(answer_a_1=answer_a[0], answer_a_2=answer_a[1])
        fields.update(answer_b_1=answer_b[0], answer_b_2=answer_b[1])
    return fields | _reference_fields(question)


def _reference_fields(question: Question) -> dict[str, Any]:
    if not question.reference:
        return {}
    return {f"ref_answer_{index}": text for index, text in enumerate(question.reference, start=1)}
