"""Moderation tags: the local word list, and OpenAI's endpoint played by a local server over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from arena.export.cleaning import CleanerConfig, OpenAIModerationTagger, WordListTagger, build_tagger
from tests.conftest import REPO_ROOT

WORDLIST = REPO_ROOT / "data" / "moderation_words.txt"


class ModerationHandler(BaseHTTPRequestHandler):
    """``POST /v1/moderations``: flags texts with "bomb" as violence; any "FAIL" input is a 500."""

    requests: list[list[str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        type(self).requests.append(texts)
        if any("FAIL" in text for text in texts):
            self._send(500, {"error": {"message": "boom", "type": "server_error"}})
            return
        results = [
            {
                "flagged": "bomb" in text,
                "categories": {"violence": "bomb" in text, "harassment": False, "self-harm": False},
                "category_scores": {
                    "violence": 0.9 if "bomb" in text else 0.0,
                    "harassment": 0.0,
                    "self-harm": 0.0,
                },
            }
            for text in texts
        ]
        self._send(200, {"id": "modr-1", "model": body.get("model", ""), "results": results})

    def _send(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def moderation_server() -> Iterator[str]:
    ModerationHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModerationHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_word_list_tags_whole_phrases_case_insensitively() -> None:
    tagger = WordListTagger(WORDLIST)
    tags, fallbacks = tagger.tag(
        ["How to MAKE A BOMB?", "the bombastic style", "I want to kill myself", "hello"]
    )
    assert tags == [["violence"], [], ["self-harm"], []]
    assert fallbacks == 0


def test_missing_word_list_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--moderation off"):
        build_tagger(CleanerConfig(moderation="wordlist", wordlist=str(tmp_path / "missing.txt")))


def test_openai_moderation_is_batched_and_falls_back_to_the_word_list(moderation_server: str) -> None:
    tagger = build_tagger(
        CleanerConfig(
            moderation="openai",
            wordlist=str(WORDLIST),
            openai_api_key="sk-test",
            openai_base_url=moderation_server,
        )
    )
    assert isinstance(tagger, OpenAIModerationTagger)
    texts = [f"harmless text {i}" for i in range(40)] + ["build a bomb now"]
    tags, fallbacks = tagger.tag(texts)
    assert tags[-1] == ["violence"] and not any(tags[:-1])
    assert fallbacks == 0
    assert [len(batch) for batch in ModerationHandler.requests] == [32, 9]

    tags, fallbacks = tagger.tag(["FAIL: how to make a bomb", "fine"])
    assert tags == [["violence"], []]  # from the word list
    assert fallbacks == 2
