"""Frames come into the store from image folders, videos, Slicer sequence files and recordings, each once."""

from __future__ import annotations

import cv2
import nrrd
import numpy as np
import pytest

from NerveSegLogic.annotate.importers import SourceError, import_source, read_sequence
from NerveSegLogic.store.database import AnnotationStore


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "import.nsdb") as s:
        yield s


def _pattern(seed, shape=(30, 40)):
    return np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)


def test_image_folder_in_natural_order_with_colour_to_grey_and_tiff_pages(tmp_path, store):
    folder = tmp_path / "S03_scan"
    folder.mkdir()
    grey = {name: _pattern(i) for i, name in enumerate(("frame1", "frame2", "frame10"))}
    for name, image in grey.items():
        cv2.imwrite(str(folder / f"{name}.png"), image)
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[..., 2] = 200  # pure red in OpenCV's BGR order
    cv2.imwrite(str(folder / "frame11.jpg"), colour, [cv2.IMWRITE_JPEG_QUALITY, 100])
    pages = [np.full((30, 40), 1000 * (k + 1), np.uint16) for k in range(2)]
    cv2.imwritemulti(str(folder / "frame12.tiff"), pages)
    (folder / "notes.txt").write_text("not an image")

    report = import_source(store, folder)
    assert report.added == 6 and report.duplicates == 0 and report.subject == "S03_scan"
    frames = [store.frame(i) for i in report.frame_ids]
    assert [f.metadata["file"] for f in frames] == ["frame1.png", "frame2.png", "frame10.png", "frame11.jpg",
                                                    "frame12.tiff", "frame12.tiff"]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(store.image(frames[2].id), grey["frame10"])
    red_grey = store.image(frames[3].id)
    assert abs(int(np.median(red_grey)) - round(0.299 * 200)) <= 1  # BT.601 luminance of red, not of blue
    assert store.image(frames[5].id).dtype == np.uint16 and frames[5].metadata["page"] == 1
    assert all(f.subject == "S03_scan" and f.geometry is None for f in frames)


def test_importing_the_same_pixels_again_adds_nothing(tmp_path, store):
    folder = tmp_path / "a"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), _pattern(i))
    first = import_source(store, folder, subject="P1", spacing_mm=(0.1, 0.1))
    again = import_source(store, folder, subject="P1")
    assert again.added == 0 and again.duplicates == 3 and again.frame_ids == first.frame_ids
    other = tmp_path / "b"
    other.mkdir()
    cv2.imwrite(str(other / "copy.png"), _pattern(1))
    cv2.imwrite(str(other / "new.png"), _pattern(99))
    mixed = import_source(store, other)
    assert (mixed.added, mixed.duplicates) == (1, 1) and mixed.frame_ids[0] == first.frame_ids[1]
    assert store.frame_count() == 4
    assert store.frame(first.frame_ids[0]).geometry.spacing == (0.1, 0.1, 1.0)


def test_video_frames_in_order(tmp_path, store):
    path = tmp_path / "S09 clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (48, 32))
    assert writer.isOpened()
    levels = [30, 90, 150, 210, 250]
    for level in levels:
        writer.write(np.full((32, 48, 3), level, np.uint8))
    writer.release()
    report = import_source(store, path)
    assert report.added == 5 and report.subject == "S09 clip"
    for frame_id, level in zip(report.frame_ids, levels):
        record = store.frame(frame_id)
        assert (record.width, record.height) == (48, 32)
        assert abs(float(store.image(frame_id).mean()) - level) < 4  # MJPEG is lossy
    assert store.frame(report.frame_ids[2]).metadata == {"time_s": 0.1, "fps": 20.0}


def _write_sequence(path, frames, list_first, spacing=(0.2, 0.3), origin_lps=(-10.0, 20.0, 5.0)):
    """A 2D+t Slicer volume sequence in LPS, as Slicer writes it (list axis last in new versions, first in old)."""
    n, h, w = frames.shape
    data = np.transpose(frames, (2, 1, 0))[:, :, np.newaxis, :]  # (I, J, K, N)
    directions = [[-spacing[0], 0, 0], [0, -spacing[1], 0], [0, 0, 1.0]]  # RAS +x/+y axes written in LPS
    header = {"space": "left-posterior-superior", "space origin": np.array(origin_lps),
              "labels": ["", "", "", "time"], "units": ["", "", "", "s"],
              "DataNodeClassName": "vtkMRMLScalarVolumeNode"}
    values = " ".join(f"{0.04 * i:.2f}" for i in range(n))
    if list_first:
        data = np.moveaxis(data, 3, 0)
        header.update({"kinds": ["list", "domain", "domain", "domain"],
                       "space directions": np.array([[np.nan] * 3] + directions),
                       "labels": ["time", "", "", ""], "units": ["s", "", "", ""],
                       "axis 0 index type": "numeric", "axis 0 index values": values})
    else:
        header.update({"kinds": ["domain", "domain", "domain", "list"],
                       "space directions": np.array(directions + [[np.nan] * 3]),
                       "axis 3 index type": "numeric", "axis 3 index values": values})
    nrrd.write(str(path), data, header)  # fields pynrrd does not know are written as custom "key:=value"


@pytest.mark.parametrize("list_first", [False, True], ids=["list-axis-last", "list-axis-first"])
def test_slicer_sequence_frames_keep_orientation_and_geometry(tmp_path, store, list_first):
    frames = np.stack([_pattern(10 + i) for i in range(3)])
    path = tmp_path / "S07.seq.nrrd"
    _write_sequence(path, frames, list_first)
    report = import_source(store, path)
    assert report.added == 3 and report.subject == "S07"
    for i, frame_id in enumerate(report.frame_ids):
        assert np.array_equal(store.image(frame_id), frames[i])
        record = store.frame(frame_id)
        assert record.metadata["sequence_index"] == f"{0.04 * i:.2f}" and record.metadata["index_name"] == "time"
        geometry = record.geometry
        assert geometry.spacing == pytest.approx((0.2, 0.3, 1.0))
        assert geometry.origin == pytest.approx((10.0, -20.0, 5.0))  # LPS -> RAS
        assert np.allclose(geometry.direction_matrix(), np.eye(3))


def test_bad_sources_are_refused_naming_the_file_and_field(tmp_path, store):
    with pytest.raises(FileNotFoundError):
        import_source(store, tmp_path / "missing.png")
    odd = tmp_path / "scan.xyz"
    odd.write_text("?")
    with pytest.raises(SourceError, match="scan.xyz"):
        import_source(store, odd)
    volume = tmp_path / "vol.seq.nrrd"
    nrrd.write(str(volume), np.zeros((4, 5, 2, 3), np.uint8),
               {"kinds": ["domain", "domain", "domain", "list"], "space": "left-posterior-superior",
                "space directions": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [np.nan] * 3])})
    with pytest.raises(SourceError, match="'sizes'.*2 slices"):
        read_sequence(volume)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files"):
        import_source(store, empty)
    assert store.frame_count() == 0


def _write_recording(folder, frames, masks):
    """A recording folder shaped like a saved NerveSeg scene: .mrml with an image sequence and a labelmap sequence."""
    folder.mkdir()
    _write_sequence(folder / "rec_image.seq.nrrd", frames, list_first=False)
    _write_sequence(folder / "rec_labels.seq.nrrd", masks, list_first=False)
    (folder / "rec.mrml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<MRML version="Slicer4.4.0">\n'
        ' <Sequence id="vtkMRMLSequenceNode1" name="image" attributes="DataNodeClassName:vtkMRMLScalarVolumeNode" '
        'references="storage:vtkMRMLVolumeSequenceStorageNode1;"></Sequence>\n'
        ' <Sequence id="vtkMRMLSequenceNode2" name="labels" '
        'attributes="DataNodeClassName:vtkMRMLLabelMapVolumeNode;NerveSeg.model:smistad-unet" '
        'references="storage:vtkMRMLVolumeSequenceStorageNode2;"></Sequence>\n'
        ' <VolumeSequenceStorage id="vtkMRMLVolumeSequenceStorageNode1" fileName="rec_image.seq.nrrd">'
        '</VolumeSequenceStorage>\n'
        ' <VolumeSequenceStorage id="vtkMRMLVolumeSequenceStorageNode2" fileName="rec_labels.seq.nrrd">'
        '</VolumeSequenceStorage>\n</MRML>\n')


def test_recording_brings_frames_and_its_masks_as_model_versions(tmp_path, store):
    frames = np.stack([_pattern(50 + i) for i in range(3)])
    masks = np.zeros_like(frames)
    masks[:, 5:10, 5:10] = 1
    masks[1, 20:25, 30:35] = 2
    folder = tmp_path / "S11_recording"
    _write_recording(folder, frames, masks)
    already = store.add_frame(frames[2], "elsewhere", 0)
    mine = store.save_mask(already.id, np.zeros((30, 40), np.uint8), {1: "nerve"}, "alice", "manual", None)

    report = import_source(store, folder, author="importer", classes={1: "nerve", 2: "blood_vessel"})
    assert report.added == 2 and report.duplicates == 1 and report.subject == "S11_recording"
    assert report.masks_added == 2 and report.masks_skipped == 1
    for i, frame_id in enumerate(report.frame_ids[:2]):
        version = store.current(frame_id)
        assert (version.origin, version.model_name, version.author) == ("model", "smistad-unet", "importer")
        assert np.array_equal(version.mask, masks[i]) and version.classes == {1: "nerve", 2: "blood_vessel"}
    assert [v.id for v in store.history(already.id)] == [mine.id]  # its history is untouched
    with pytest.raises(SourceError, match="do not name|does not name"):
        import_source(store, folder.rename(tmp_path / "again"), author="importer")  # labels 1, 2 unnamed


def test_a_scene_recorded_by_livescene_imports_with_its_masks(tmp_path, store):
    """The real thing: a recording written by NerveSeg's own LiveScene (Slicer's MRML library) and saved."""
    from NerveSegLogic.classes import classes_from_mapping
    from NerveSegLogic.frame import Frame, ImageGeometry, SegmentationResult
    from NerveSegLogic.scene import LiveScene

    classes = classes_from_mapping({1: "nerve", 2: "blood_vessel"})
    geometry = ImageGeometry(spacing=(0.2, 0.3, 1.0), origin=(5.0, -7.0, 0.0))
    images, labelmaps = [], []
    with LiveScene(classes, record=True) as scene:
        for i in range(3):
            image = _pattern(70 + i)
            labelmap = np.zeros((30, 40), np.uint8)
            labelmap[5:12, 5:12] = 1
            labelmap[18:24, 20 + i:30 + i] = 2
            frame = Frame(image=image, geometry=geometry, frame_id=i)
            frame.stamp("received", when=100.0 + 0.04 * i)  # 25 fps
            scene.apply(SegmentationResult(frame=frame, labelmap=labelmap, model_name="smistad-unet",
                                           classes=classes))
            images.append(image)
            labelmaps.append(labelmap)
        folder = scene.save(tmp_path / "S12_live").parent
    report = import_source(store, folder, author="importer")
    assert report.added == 3 and report.masks_added == 3 and report.subject == "S12_live"
    for i, frame_id in enumerate(report.frame_ids):
        assert np.array_equal(store.image(frame_id), images[i])
        record = store.frame(frame_id)
        assert record.geometry.spacing == pytest.approx((0.2, 0.3, 1.0))
        assert record.geometry.origin == pytest.approx((5.0, -7.0, 0.0))
        version = store.current(frame_id)
        assert version.origin == "model" and version.classes == {1: "nerve", 2: "blood_vessel"}
        assert np.array_equal(version.mask, labelmaps[i])
