"""The panel's logic, by job (this module only gathers the names the Slicer module and older code import):

- :mod:`NerveSegLogic.live.controller`: :class:`LiveController`, what the live panel's buttons do;
- :mod:`NerveSegLogic.live.runs`: the in-process and remote runs it polls; :mod:`NerveSegLogic.worker`: the
  worker process that receives and segments outside Slicer's process (the panel's default);
- :mod:`NerveSegLogic.live.status`, :mod:`NerveSegLogic.live.choices`: status line, display settings, inputs;
- :mod:`NerveSegLogic.live.selftest`: the replay self-test of the module test and pytest;
- :mod:`NerveSegLogic.review_controller`: :class:`ReviewController`, the annotation review panel.
"""

from __future__ import annotations

from .live.choices import (BACKENDS, DEFAULT_DEVICE_NAME, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REMOTE_PORT,
                           INTENDED_USE, LABEL_DEVICE_NAME, MODES, STATUS_INTERVAL_S, InputChoice)
from .live.controller import LiveController, card_summary
from .live.runs import VolumeNodeInput, frame_from_volume_node
from .live.selftest import ReplayReport, run_sample_replay, segmenter_with_random_fallback
from .live.status import DisplaySettings, LiveStatus
from .review_controller import ReviewConflict, ReviewController
from .signals import Signal

__all__ = ["Signal", "LiveController", "LiveStatus", "DisplaySettings", "InputChoice", "VolumeNodeInput",
           "ReviewController", "card_summary", "frame_from_volume_node", "run_sample_replay", "ReplayReport",
           "segmenter_with_random_fallback", "ReviewConflict", "MODES", "BACKENDS", "DEFAULT_HOST", "DEFAULT_PORT",
           "DEFAULT_DEVICE_NAME", "DEFAULT_REMOTE_PORT", "LABEL_DEVICE_NAME", "STATUS_INTERVAL_S", "INTENDED_USE"]
