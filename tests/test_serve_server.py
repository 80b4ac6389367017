"""nimbuild.runtime.serve.server: a busy or bad port, a bad shutdown value, uvicorn failing to start:
one `error:` line and exit 1, before any backend starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from nimbuild.errors import NimbuildError
from nimbuild.runtime.serve import server
from nimbuild.runtime.serve.backends.triton import free_port


def _serve(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The manifest does not exist: each check below must fail before it is read.
    return subprocess.run(
        [sys.executable, "-m", "nimbuild", "serve", "--manifest", str(tmp_path / "nope.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIM_CPU_ONLY": "1", **env},
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "nope.yaml" not in proc.stderr  # it failed before reading the manifest
    return proc.stderr


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def test_a_busy_port_is_one_error_naming_the_address(tmp_path, busy_port):
    err = _one_error_line(_serve(tmp_path, "--host", "127.0.0.1", "--port", str(busy_port)))
    assert f"127.0.0.1:{busy_port}" in err and "NIM_HTTP_API_PORT" in err and "--port" in err
    assert "uvicorn" not in err.lower()


def test_a_port_out_of_range_is_one_error(tmp_path):
    err = _one_error_line(_serve(tmp_path, "--host", "127.0.0.1", NIM_HTTP_API_PORT="99999"))
    assert "NIM_HTTP_API_PORT='99999'" in err and "out of range" in err and "1 and 65535" in err
    err = _one_error_line(_serve(tmp_path, "--host", "127.0.0.1", "--port", "70000"))
    assert "--port 70000" in err and "out of range" in err and "1 and 65535" in err


@pytest.mark.parametrize("value, needle", [("abc", "is not a number"), ("-5", "out of range")])
def test_a_bad_graceful_shutdown_value_is_one_error(tmp_path, value, needle):
    err = _one_error_line(_serve(tmp_path, NIM_GRACEFUL_SHUTDOWN_SECONDS=value))
    assert f"NIM_GRACEFUL_SHUTDOWN_SECONDS={value!r}" in err and needle in err


def test_graceful_shutdown_seconds_parses_like_the_limits():
    assert server.graceful_shutdown_seconds({}) == 30
    assert server.graceful_shutdown_seconds({"NIM_GRACEFUL_SHUTDOWN_SECONDS": " 5 "}) == 5
    assert server.graceful_shutdown_seconds({"NIM_GRACEFUL_SHUTDOWN_SECONDS": "0"}) == 0


class _Stub:
    """Just enough of a RankingService for run_server to fail around it."""

    def __init__(self):
        self.stopped = 0
        self.metrics = SimpleNamespace()
        self.model = "stub"

    def stop(self):
        self.stopped += 1


def test_run_server_turns_uvicorns_startup_exit_into_one_error(monkeypatch):
    import uvicorn

    def exits(self, sockets=None):
        raise SystemExit(3)  # what uvicorn does when its start-up fails

    monkeypatch.setattr(uvicorn.Server, "run", exits)
    monkeypatch.setattr("nimbuild.runtime.serve.app.create_app", lambda service, **options: object())
    stub = _Stub()
    port = free_port()
    sock = server.bind_listener("127.0.0.1", port)
    with pytest.raises(NimbuildError, match=rf"could not serve on 127\.0\.0\.1:{port}: .*exit 3"):
        server.run_server(stub, host="127.0.0.1", port=port, env={}, sock=sock)
    assert stub.stopped == 1 and sock.fileno() == -1


def test_run_server_with_a_busy_port_stops_the_service(busy_port):
    stub = _Stub()
    with pytest.raises(NimbuildError, match=f"127.0.0.1:{busy_port}"):
        server.run_server(stub, host="127.0.0.1", port=busy_port, env={})
    assert stub.stopped == 1
