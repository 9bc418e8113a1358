"""HTTP to the real model endpoints (OpenAI-compatible chat completions), whole or streamed."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from serving.gateway.config import Endpoint

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error answered in OpenAI's format ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "upstream_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Upstream:
    """One shared ``httpx.AsyncClient`` for every endpoint."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))

    async def close(self) -> None:
        await self._client.aclose()

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """A whole chat completion from ``endpoint``; GatewayError when it fails."""
        try:
            response = await self._client.post(self._url(endpoint), json=self._body(endpoint, body, stream=False),
                                               headers=self._headers(endpoint), timeout=endpoint.timeout_s)
        except httpx.HTTPError as error:
            raise GatewayError(502, f"endpoint {endpoint.name!r} failed: {error!r}", code="upstream_unreachable") from None
        if response.status_code != 200:
            raise _upstream_error(endpoint, response.status_code, response.text)
        try:
            return dict(response.json())
        except ValueError:
            raise GatewayError(502, f"endpoint {endpoint.name!r} answered invalid JSON", code="upstream_invalid") from None

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of a streamed chat completion (``[DONE]`` is not yielded)."""
        request = self._client.build_request("POST", self._url(endpoint), json=self._body(endpoint, body, stream=True),
                                             headers=self._headers(endpoint), timeout=endpoint.timeout_s)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise GatewayError(502, f"endpoint {endpoint.name!r} failed: {error!r}", code="upstream_unreachable") from None
        try:
            if response.status_code != 200:
                raise _upstream_error(endpoint, response.status_code, (await response.aread()).decode("utf-8", "replace"))
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    yield json.loads(data)
                except ValueError:
                    raise GatewayError(502, f"endpoint {endpoint.name!r} streamed invalid JSON",
                                       code="upstream_invalid") from None
        except httpx.HTTPError as error:
            raise GatewayError(502, f"endpoint {endpoint.name!r} stream broke: {error!r}", code="upstream_unreachable") from None
        finally:
            await response.aclose()

    @staticmethod
    def _url(endpoint: Endpoint) -> str:
        return f"{endpoint.base_url}/chat/completions"

    @staticmethod
    def _headers(endpoint: Endpoint) -> dict[str, str]:
        return {"Authorization": f"Bearer {endpoint.api_key()}"}

    @staticmethod
    def _body(endpoint: Endpoint, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        forwarded = dict(body, model=endpoint.model_id, stream=stream)
        if stream:
            forwarded["stream_options"] = {"include_usage": True}  # the gateway needs the token counts
        else:
            forwarded.pop("stream_options", None)
        return forwarded


def _upstream_error(endpoint: Endpoint, status: int, text: str) -> GatewayError:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    logger.warning("endpoint %s answered %s: %s", endpoint.name, status, message)
    # The client's own mistakes (4xx) keep their status; the endpoint's failures become 502.
    return GatewayError(status if 400 <= status < 500 else 502, f"endpoint {endpoint.name!r}: {message}",
                        code="upstream_error")
