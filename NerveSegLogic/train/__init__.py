"""Training and evaluation of the registered models on labelled ultrasound frames.

- :mod:`.metrics`: Dice, IoU, precision, recall, HD95, pixel AUC, Smistad's region detection rule, COCO AP
  (numpy/scipy/pycocotools; the conventions for empty masks are in its docstring).
- :mod:`.augment`: the papers' augmentations applied jointly to a frame and its mask (numpy/OpenCV, seeded).
- :mod:`.losses`: the cards' losses (MONAI Dice losses, RAGCM's BCE + Dice + L2, BPMSegNet's Mask R-CNN terms).
- :mod:`.data`: class checks against a model card, contiguous-block splits, frames in memory, batches and instance
  targets.
- :mod:`.loop`: :func:`~.loop.train` (``nerveseg train``): the Trainer and its epoch loop, block validation, the best
  epoch's weights; :mod:`.recipe`: the optimiser and learning-rate schedule from the card's recipe (options
  override it); :mod:`.checkpoints`: resumable safetensors + JSON checkpoints; :mod:`.reports`: the learning curve
  and the card a run writes at the end.
- :mod:`.site`: fine-tuning for a site (``--init``): the site recipe, the init's checks, frozen encoder and
  normalisation, the data fingerprint.
- :mod:`.evaluate` and :mod:`.evaluate_weights`: scoring through the live path's Segmenter (``nerveseg evaluate``),
  metrics.json and a Markdown report with overlay pictures; which card goes with a weights file.

Importing this package imports no torch; :mod:`.losses` and the training loop load it when they run.
"""
