"""What the user chooses for a live run: the panel's defaults and the run modes.

Where frames come from (:class:`~NerveSegLogic.live.inputs.InputChoice`) is :mod:`.inputs`'s; the OpenIGTLink ports
and device names are :mod:`NerveSegLogic.igtl`'s.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
#: child-process: receiving and inference in a worker process (the default in Slicer, where Python threads only
#: run while the GUI executes Python); in-process: in threads of this process (headless use, where it is faster);
#: remote: a ``nerveseg serve`` elsewhere segments, a worker process pairs its labelmaps with the frames.
MODES = ("child-process", "in-process", "remote")
#: auto: ONNX Runtime on a CPU for semantic models (INT8 where the card shows it costs < 0.01 Dice), else torch.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: The widget refreshes the status at most this often (s): twice a second is readable and costs nothing.
STATUS_INTERVAL_S = 0.5
INTENDED_USE = "Research use only, not for clinical decisions."
