"""review: the annotation review panel's logic without Qt.

- :mod:`.controller`: :class:`~.controller.ReviewController`, what the review panel's buttons and keys do;
- :mod:`.prompts`: the panel's box-and-clicks tool on the shown frame.
"""
