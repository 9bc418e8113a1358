"""The contamination judge played over real HTTP by the project's local OpenAI-compatible test server.

:class:`FakeJudgeServer` runs ``tests.fake_openai.FakeOpenAI`` with a responder that reads the benchmark item
and the training document out of the judge prompt and answers, in the JSON the real prompt asks for, with the
verdict of a function the test gives (an oracle built from known labels). ``calls`` counts the requests it
served, so tests can check caching and resume; ``fail_first`` makes the first requests fail with HTTP 400.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

from tests.fake_openai import ChatRequest, FakeOpenAI, Reply

Decide = Callable[[str, str], bool]
_PAIR = re.compile(r"Benchmark item:\n<<<\n(.*?)\n>>>\n\nTraining document:\n<<<\n(.*?)\n>>>", re.DOTALL)


class FakeJudgeServer:
    """``with FakeJudgeServer(decide) as server:`` serves ``server.base_url`` until the block ends."""

    def __init__(self, decide: Decide, *, fail_first: int = 0):
        self.decide = decide
        self.fail_first = fail_first
        self._answered = 0
        self._lock = threading.Lock()
        self._server = FakeOpenAI(self._respond, models=["oracle"])

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def calls(self) -> int:
        return len(self._server.calls())

    def __enter__(self) -> FakeJudgeServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _respond(self, request: ChatRequest) -> Reply | str:
        with self._lock:
            self._answered += 1
            if self._answered <= self.fail_first:
                return Reply(status=400, error_message="injected failure")
        found = _PAIR.search(request.last_user_message)
        if found is None:
            return Reply(status=400, error_message="not a judge prompt")
        same = self.decide(found.group(1), found.group(2))
        return json.dumps({"same": same, "reason": "oracle says " + ("same" if same else "different")})
