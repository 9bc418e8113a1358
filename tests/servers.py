"""Run ASGI apps and our model server for tests, over real HTTP on free local ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(app: object, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


DEMO_MODELS = ("demo-llama-tiny", "demo-qwen-tiny", "demo-mistral-tiny")
DEMO_CONTEXT_TOKENS = 16384  # as `arena demo` serves them (arena/cli.py)


def build_demo_models(out_dir: Path) -> Path:
    """Build the demo checkpoints (seconds) unless they are already there."""
    def current(name: str) -> bool:
        config = out_dir / name / "config.json"
        return config.exists() and json.loads(config.read_text())["max_position_embeddings"] >= DEMO_CONTEXT_TOKENS

    if not all(current(name) for name in DEMO_MODELS):
        subprocess.run([sys.executable, "-m", "serving.demo_models", "--out", str(out_dir)], check=True)
    return out_dir


@contextmanager
def demo_model_server(models_dir: Path, *, timeout_s: float = 180.0, names: tuple[str, ...] = DEMO_MODELS,
                      extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Our own engine (``python -m serving``) serving the demo models (or ``names`` of them) on
    the CPU, with ``extra_args`` for the CLI; yields its /v1 URL."""
    port = free_port()
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--max-context", str(DEMO_CONTEXT_TOKENS), *extra_args]
    for name in names:
        command += ["--model", f"{name}={models_dir / name}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited with code {process.returncode}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the model server did not start in time")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def registry_toml(base_url: str, names: tuple[str, ...], **fields: object) -> str:
    """A registry with every named model on one endpoint."""
    extra = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in fields.items())
    return "".join(
        f'[[models]]\nname = "{name}"\nbase_url = "{base_url}"\nmodel_id = "{name}"\n'
        f'organization = "Org {name}"\nlicense = "Apache-2.0"\ntags = ["open"]\n{extra}\n'
        for name in names
    )


class TcpProxy:
    """A TCP proxy in a background thread, to play a database outage over real connections.

    ``cut()`` drops every open connection and refuses new ones (as a stopped server does);
    ``restore()`` accepts again.  Point the app at ``proxy.port`` instead of the server's.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener.settimeout(0.1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                client.close()  # refused: the database is "down"
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
