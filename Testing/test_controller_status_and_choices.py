"""The controller's status line, its rate limit, the model card text and the errors that tell the user what to fix.
No threads or sockets here: a fake clock drives the rate limit."""

from __future__ import annotations

import pytest

from NerveSegLogic.live.choices import INTENDED_USE, STATUS_INTERVAL_S
from NerveSegLogic.live.controller import LiveController, card_summary
from NerveSegLogic.live.status import LiveStatus
from NerveSegLogic.signals import Signal
from NerveSegLogic.models import registry


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_status_is_emitted_at_most_twice_a_second_while_ticking():
    clock = FakeClock()
    controller = LiveController(clock=clock)
    emitted = []
    controller.status_changed.connect(lambda status: emitted.append(clock.now))
    for _ in range(41):  # 4 s of ticks every 100 ms
        controller.tick()
        clock.now += 0.1
    assert STATUS_INTERVAL_S == 0.5
    assert len(emitted) == 9  # at 0, 0.5, ..., 4.0 s (up to float rounding of the 0.1 steps)
    gaps = [b - a for a, b in zip(emitted, emitted[1:])]
    assert min(gaps) >= 0.5 - 1e-9


def test_status_due_follows_the_interval():
    clock = FakeClock()
    controller = LiveController(clock=clock, status_interval_s=0.5)
    assert controller.status_due()
    controller.tick()
    assert not controller.status_due()
    clock.now += 0.49
    assert not controller.status_due()
    clock.now += 0.02
    assert controller.status_due()


def test_status_text_says_connected_lost_or_waiting():
    running = dict(running=True, mode="in-process", model="smistad-unet", source="127.0.0.1:18944 (Image_Reference)",
                   fps=24.96, latency_ms=41.2, frames_dropped=3)
    assert LiveStatus(connected=True, **running).text() == (
        "Running (in-process, smistad-unet) | connected to 127.0.0.1:18944 (Image_Reference) | 25.0 fps | "
        "latency 41 ms | dropped 3")
    assert "CONNECTION LOST to 127.0.0.1:18944" in LiveStatus(connected=False, input_lost=True, **running).text()
    assert "waiting for 127.0.0.1:18944" in LiveStatus(connected=False, **running).text()
    remote = dict(running, mode="remote", remote="gpu-box:18945", connected=True)
    assert "SERVER LOST gpu-box:18945" in LiveStatus(remote_connected=False, remote_lost=True, **remote).text()
    stopped = LiveStatus(source="volume 'Image_Reference'", frames_applied=12, recording=True, recorded=12).text()
    assert stopped == "Stopped | input: volume 'Image_Reference' | 12 frames segmented | recording (12 frames)"


def test_card_summary_names_classes_input_size_training_data_and_research_use():
    card = registry.card(registry.default_name())
    text = card_summary(card)
    for c in card.classes:
        assert f"{c.name} ({c.label})" in text
    assert f"{card.input.height}x{card.input.width} px" in text
    assert card.training["data"] in text
    assert "Speed: " in text
    assert text.splitlines()[-1] == (card.intended_use or INTENDED_USE)
    assert "Research use only, not for clinical decisions." in text
    if not card.has_weights:
        assert "Weights: none shipped yet" in text


def test_select_model_reads_only_the_card_and_rejects_unknown_names_and_backends():
    controller = LiveController()
    name = registry.default_name()
    assert controller.select_model(name).startswith(f"{name}: ")
    assert controller.model_name == name and controller.class_keys() == [c.key for c in registry.card(name).classes]
    with pytest.raises(KeyError, match="valid names"):
        controller.select_model("no-such-model")
    with pytest.raises(ValueError, match="backend"):
        controller.select_model(name, backend="tensorrt")
    assert controller.model_names() == registry.names()


@pytest.mark.parametrize("host, port, message", [("", 18944, "host is empty"), ("127.0.0.1", 0, "1..65535"),
                                                 ("127.0.0.1", 70000, "1..65535"),
                                                 ("127.0.0.1", "abc", "whole number")])
def test_bad_addresses_are_refused_with_what_is_wrong(host, port, message):
    controller = LiveController()
    with pytest.raises(ValueError, match=message):
        controller.connect(host, port)
    with pytest.raises(ValueError, match=message):
        controller.connect_remote(host, port)


def test_start_says_what_is_missing():
    controller = LiveController()
    with pytest.raises(ValueError, match="choose an input first"):
        controller.start()
    controller.connect("127.0.0.1", 18944)
    with pytest.raises(ValueError, match="choose a model first"):
        controller.start()
    controller.select_model(registry.default_name())
    with pytest.raises(ValueError, match="segmentation server"):
        controller.start("remote")
    with pytest.raises(ValueError, match="unknown mode"):
        controller.start("cloud")
    assert not controller.running


def test_use_volume_node_refuses_none():
    with pytest.raises(ValueError, match="choose a volume node"):
        LiveController().use_volume_node(None)


def test_signal_calls_in_order_survives_a_failing_callback_and_disconnects():
    signal = Signal("test")
    calls = []
    first = signal.connect(lambda x: calls.append(("first", x)))
    signal.connect(lambda x: 1 / 0)
    signal.connect(lambda x: calls.append(("third", x)))
    signal.connect(first)  # connecting twice keeps one
    signal.emit(7)
    assert calls == [("first", 7), ("third", 7)]
    signal.disconnect(first)
    signal.emit(8)
    assert calls[-1] == ("third", 8) and len(calls) == 3
    signal.disconnect()
    assert len(signal) == 0
