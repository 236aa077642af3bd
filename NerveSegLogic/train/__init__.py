"""Training and evaluation of the registered models on labelled ultrasound frames.

- :mod:`.metrics`: Dice, IoU, precision, recall, HD95, pixel AUC, Smistad's region detection rule, COCO AP
  (numpy/scipy/pycocotools; the conventions for empty masks are in its docstring).
- :mod:`.augment`: the papers' augmentations applied jointly to a frame and its mask (numpy/OpenCV, seeded).
- :mod:`.losses`: the cards' losses (MONAI Dice losses, RAGCM's BCE + Dice + L2, BPMSegNet's Mask R-CNN terms).
- :mod:`.data`: class checks against a model card, contiguous-block splits, frames in memory, batches and instance
  targets.
- :mod:`.loop`: :func:`~.loop.train` (``nerveseg train``): the card's recipe, resumable safetensors checkpoints,
  learning curve, trained weights and card.
- :mod:`.site`: fine-tuning for a site (``--init``): the site recipe, the init's checks, frozen encoder and
  normalisation, the data fingerprint.
- :mod:`.evaluate` and :mod:`.runs`: scoring through the live path's Segmenter (``nerveseg evaluate``), metrics.json
  and a Markdown report with overlay pictures.

Importing this package imports no torch; :mod:`.losses` and the training loop load it when they run.
"""
