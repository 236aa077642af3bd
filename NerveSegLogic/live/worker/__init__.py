"""worker: the segmentation worker process the Slicer panel owns (receiving and inference outside Slicer's process).

- :mod:`.link`: the framed messages between the two processes (non-blocking on Slicer's side);
- :mod:`.child`: the worker's main (``python -m NerveSegLogic.live.worker``);
- :mod:`.parent`: starting, watching, restarting and stopping it, and the run the LiveController polls.
"""
