"""Labelled data sets in and out.

- :mod:`.readers`: ``open_dataset(path)`` for image/mask folders, Kaggle TIFF pairs, COCO, Labelme, Slicer
  ``.seg.nrrd`` and nnU-Net; :class:`Sample`, :class:`LabelledDataset`, :class:`DatasetError`.
- :mod:`.splits`: contiguous-block folds for training, subject-level splits for export.
- writers, one per format beside its reader (:mod:`.nnunet`, :mod:`.coco`, :mod:`.labelme`, :mod:`.pairs`,
  :mod:`.slicer`), and :mod:`.export`: cohorts from the annotation store, de-identified (:mod:`.deidentify`) and
  listed with checksums (:mod:`.manifest`).

Importing this package imports nothing heavy; each format loads its libraries when used.
"""
