"""`nerveseg replay` through its Python entry point: it serves the frames it is asked for, prints its progress and
exits cleanly; its help states what it does, its defaults and an example."""

import argparse
import socket
import threading

import cv2
import numpy as np
import pytest

from NerveSegLogic.commands import replay
from NerveSegLogic.stream import ImageReceiver

WAIT = 15.0


def parser():
    top = argparse.ArgumentParser(prog="nerveseg")
    top.commands = top.add_subparsers(dest="command")
    replay.register(top.commands)
    return top


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replay_command_serves_the_requested_frames_and_exits_zero(tmp_path, capsys):
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"{index}.png"), np.full((20, 30), 10 * index, np.uint8))
    port = free_port()
    args = parser().parse_args(["replay", "--source", str(tmp_path), "--port", str(port), "--fps", "100",
                                "--frames", "5", "--loop", "--spacing", "0.2", "--wait-client",
                                "--device-name", "Image_Test"])
    result = {}
    command = threading.Thread(target=lambda: result.setdefault("rc", args.func(args)))
    frames = []
    receiver = ImageReceiver(port=port, on_frame=frames.append, reconnect_min_s=0.02, reconnect_max_s=0.1)
    command.start()
    receiver.start()
    try:
        assert receiver.wait_for_frames(5, WAIT)
        command.join(WAIT)
    finally:
        receiver.stop()
    assert not command.is_alive() and result["rc"] == 0
    assert [int(f.image[0, 0]) for f in frames] == [0, 10, 20, 0, 10]
    assert all(f.device_name == "Image_Test" for f in frames)
    assert frames[0].geometry.spacing == pytest.approx((0.2, 0.2, 1.0), rel=1e-6)
    out = capsys.readouterr().out
    assert f"127.0.0.1:{port}" in out and "finished: 5 frames sent" in out


def test_replay_command_reports_a_missing_source_and_exits_one(tmp_path, capsys):
    args = parser().parse_args(["replay", "--source", str(tmp_path / "nothing"), "--port", "0"])
    assert args.func(args) == 1
    assert "nothing" in capsys.readouterr().err


def test_replay_help_states_purpose_defaults_and_an_example():
    text = parser().commands.choices["replay"].format_help()
    for expected in ("OpenIGTLink", "PLUS", "18944", "Image_Reference", "127.0.0.1", "25", ".seq.nrrd",
                     "examples:", "nerveseg replay --source"):
        assert expected in text, expected


def test_registering_the_command_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import argparse, sys; from NerveSegLogic.commands import replay; "
            "replay.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'cv2', 'slicer', 'nrrd', 'NerveSegLogic.stream') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ctrl_c_stops_the_command_cleanly_with_a_summary():
    import signal
    import subprocess
    import sys

    code = ("import argparse, sys; from NerveSegLogic.commands import replay; p = argparse.ArgumentParser(); "
            "replay.register(p.add_subparsers()); a = p.parse_args(['replay', '--port', '0', '--loop']); "
            "sys.exit(a.func(a))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        first = process.stdout.readline()  # printed once the server listens
        assert first.startswith("replaying "), first + process.stderr.read()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "stopped:" in out and "Traceback" not in err
