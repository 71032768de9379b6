"""The server process against an abusive client and an operator: idle sockets held open, SIGTERM in the
middle of a stream, and a crafted weights file in a model folder. Each test runs my_openai_api.py as a
real process (waitress), as a user runs it.
"""
import http.client
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import tiny_config
from test_api import ROOT, start_server

from model.checkpoint import load_model, save_weights
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from serving.app import QUEUE_KEY, create_app
from serving.protocol import Defaults
from serving.server import Server

ASK = {"messages": [{"role": "user", "content": "你好"}], "temperature": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=128))
    with torch.no_grad():
        model.model.embed_tokens.weight[EOS_ID].zero_()  # EOS logit 0 while others spread: never the argmax
    path = tmp_path_factory.mktemp("ckpt") / "full_sft_64x2.pth"
    save_weights(model, path)
    return path


def serve(checkpoint, tokenizer_dir, tmp_path, *flags):
    """(process, port, log path) of a server on a free port, without a key."""
    log_path = tmp_path / "server.log"
    proc, url = start_server(["--ckpt", str(checkpoint), "--tokenizer", str(tokenizer_dir), *flags], log_path,
                             env={"OMP_NUM_THREADS": "1"})
    return proc, int(url.rsplit(":", 1)[1]), log_path


def open_stream(port: int, max_tokens: int):
    """A streaming chat request; returns (connection, response) once the first content chunk has arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/v1/chat/completions", json.dumps({**ASK, "stream": True, "max_tokens": max_tokens}),
                       {"Content-Type": "application/json", "Host": "localhost"})
    response = connection.getresponse()
    assert response.status == 200
    assert '"role": "assistant"' in next_event(response)
    assert '"content": "' in next_event(response)  # the first generated text: the model is running
    return connection, response


def next_event(response) -> str:
    lines = []
    while True:
        line = response.readline().decode()  # de-chunked, unlike response.fp
        if not line:
            return ""
        if line == "\n":
            return "".join(lines)
        lines.append(line.rstrip("\n"))


def rest_of_stream(response) -> list:
    events = []
    while True:
        event = next_event(response)
        if not event:
            return events
        events.append(event)


def quick_answer(port: int, chat: bool) -> float:
    """Seconds a small request (a 2-token chat completion, or the model list) takes on a new connection."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json", "Host": "localhost"}
    if chat:
        connection.request("POST", "/v1/chat/completions", json.dumps({**ASK, "max_tokens": 2}), headers)
    else:
        connection.request("GET", "/v1/models", headers=headers)
    answer = json.loads(connection.getresponse().read())
    connection.close()
    assert answer["usage"]["completion_tokens"] == 2 if chat else answer["data"]
    return time.perf_counter() - started


def test_idle_sockets_of_one_client_do_not_starve_the_others(checkpoint, tokenizer_dir, tmp_path):
    """150 idle sockets against the 100 connections waitress keeps: before the mend the next client waited
    for the idle timeout (60 s, up to 90 between cleanups); now the longest-idle connection makes room at
    once. A connection that is streaming a reply is not idle and keeps its place."""
    proc, port, log_path = serve(checkpoint, tokenizer_dir, tmp_path, "--max_new_tokens", "100000")
    idle = []
    try:
        connection, streaming = open_stream(port, 3000)
        for _ in range(150):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        listed = quick_answer(port, chat=False)  # while the stream holds the model
        events = rest_of_stream(streaming)
        assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
        connection.close()
        answered = quick_answer(port, chat=True)
        print(f"\nwith 150 idle sockets open, another client got the model list in {listed:.2f} s and a chat "
              f"completion in {answered:.2f} s")
        assert listed < 5 and answered < 5
        closed = 0
        for sock in idle:
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except (TimeoutError, ConnectionError):
                pass
        assert closed >= 50  # the oldest idle ones made room
        assert "closed the longest-idle one" in log_path.read_text()
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.wait(timeout=60)


def stop_mid_stream(checkpoint, tokenizer_dir, tmp_path, max_tokens: int, drain_timeout: str):
    """SIGTERM while a stream runs; returns (events after it, exit code, seconds to exit, log text)."""
    proc, port, log_path = serve(checkpoint, tokenizer_dir, tmp_path, "--max_new_tokens", "1000000",
                                 "--drain_timeout", drain_timeout)
    try:
        connection, response = open_stream(port, max_tokens)
        proc.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        deadline = time.time() + 10
        while True:  # the listening socket closes at once: new clients are refused, not left waiting
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.time() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        events = rest_of_stream(response)
        connection.close()
        code = proc.wait(timeout=60)
        return events, code, time.perf_counter() - started, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_a_stream_finish_then_exits_0(checkpoint, tokenizer_dir, tmp_path):
    events, code, _, log = stop_mid_stream(checkpoint, tokenizer_dir, tmp_path, 2000, "120")
    assert code == 0, log[-2000:]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert "2000 completion tokens, finish=length" in log  # finished whole, and logged
    assert "stopped: every request answered" in log and "Traceback" not in log


def test_sigterm_ends_a_stream_still_running_after_the_drain_timeout(checkpoint, tokenizer_dir, tmp_path):
    events, code, seconds, log = stop_mid_stream(checkpoint, tokenizer_dir, tmp_path, 1_000_000, "1")
    assert code == 0, log[-2000:]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert "cut short: the server is stopping" in log and "Traceback" not in log
    print(f"\nSIGTERM with a million-token stream running: exit {code} after {seconds:.1f} s, [DONE] sent")
    assert seconds < 30


@pytest.mark.parametrize("dev", [False, True], ids=["waitress", "werkzeug"])
def test_drain_in_process_ends_streams_cleanly_on_both_servers(checkpoint, tokenizer, dev):
    """Server.drain as the SIGTERM handler calls it: a stream still generating after the grace ends with its
    final chunk and [DONE], serve_forever returns, and a request that comes while draining gets a 503."""
    app = create_app(load_model(checkpoint), tokenizer, "tiny", Defaults(max_tokens=1_000_000), max_queue=2)
    server = Server(app, "127.0.0.1", 0, dev=dev, threads=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    connection, response = open_stream(server.port, 1_000_000)
    try:
        server.drain(app.extensions[QUEUE_KEY], 0.5)
        refused = app.test_client().post("/v1/chat/completions", json={**ASK, "max_tokens": 2})
        assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "server_shutting_down"
        events = rest_of_stream(response)
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
        thread.join(30)
        assert not thread.is_alive()
    finally:
        connection.close()
        if thread.is_alive():
            server.shutdown()


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_weights_in_a_model_folder_is_one_line(tokenizer_dir, tmp_path):
    folder, marker = tmp_path / "exported", tmp_path / "PWNED"
    MiniMindForCausalLM(tiny_config()).save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # the weights are read from pytorch_model.bin instead
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(RunsAShellCommand(marker), f)
    result = subprocess.run([sys.executable, str(ROOT / "my_openai_api.py"), "--ckpt", str(folder),
                             "--tokenizer", str(tokenizer_dir), "--port", "0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pytorch_model.bin: refused to load" in lines[0], result.stderr
    assert not marker.exists()
