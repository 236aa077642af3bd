"""inference: running the models of :mod:`NerveSegLogic.models` on frames. It imports models/, never the reverse.

From the bottom up:

- :mod:`.backends`: the runtimes (torch, ONNX Runtime float32 and INT8, flip test-time augmentation), devices,
  threads; :mod:`.quantize`: making a card's INT8 graph; :mod:`.presence`: a frame's calibrated presence;
- :mod:`.loading`: a card -> the backend that runs it (``auto``, when ``auto`` runs INT8, the cached ONNX and INT8
  graphs);
- :mod:`.segmenter`: :class:`~.segmenter.Segmenter` (``from_card``; ``load_segmenter`` for the live path) and
  :mod:`.promptable`: :class:`~.promptable.PromptableSegmenter` (box / clicks -> one mask);
- :mod:`.steady`: the live stream's steadied overlay.
"""
