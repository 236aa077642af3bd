"""live: the live path, from frames arriving to results in the scene, and the live panel's logic without Qt.

- :mod:`.engine`, :mod:`.pipeline`: the inference thread on the newest frame and the receive -> segment -> sinks loop;
- :mod:`.runs`: the :class:`~.runs.Run` protocol (all the controller may call on a run) and the in-process run;
  :mod:`.remote`: the remote run (a ``nerveseg serve``'s labelmaps paired with the frames by IGTL timestamp);
  :mod:`.worker`: the worker process (the Slicer panel's default) and its run;
- :mod:`.inputs`: where frames come from (input choice, connection watch), shared by the panel's logic and the
  worker, which imports nothing of the panel's logic (controller, runs, choices, status, selftest);
- :mod:`.controller`: :class:`~.controller.LiveController`, what the live panel's buttons do; :mod:`.status`,
  :mod:`.choices`: status line, display settings, the panel's defaults and modes; :mod:`.selftest`: the replay
  self-test;
- :mod:`.demo`, :mod:`.serve`, :mod:`.serve_streams`: ``nerveseg demo`` and ``nerveseg serve``.

Importing the package, its controller, choices or status imports neither torch, OpenCV, ONNX Runtime nor
``slicer``: a bare Slicer shows the panel and lists the models before any optional package is installed.
"""
