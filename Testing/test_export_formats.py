"""Export formats: each one read back by NerveSeg's readers with the same masks and images, and checked by the tool
that reads it (nnU-Net's own integrity check, pycocotools' COCOeval, slicerio, Labelme's shape conventions)."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.datasets.export import ExportFrame, ExportOptions, export_cohort, frames_from_store
from NerveSegLogic.datasets.readers import open_dataset
from NerveSegLogic.datasets.synthetic import fill_store

REPO = Path(__file__).resolve().parent.parent
H, W = 210, 290


@pytest.fixture(scope="module")
def store_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "annotations.db"
    store = AnnotationStore(path)
    fill_store(store, n_frames=12, n_subjects=6, height=H, width=W, spacing_mm=0.15)
    frames = frames_from_store(store, ["accepted"])
    yield store, frames
    store.close()


def _export(frames, out, fmt, **options):
    return export_cohort(frames, out, ExportOptions(format=fmt, progress=False, **options))


def _assert_round_trip(store, frames, out, data):
    manifest = json.loads((out / "manifest.json").read_text())
    case_to_frame = {f["case"]: f["frame_id"] for f in manifest["frames"]}
    assert sorted(data.names()) == sorted(case_to_frame)
    assert [c.key for c in data.classes] == ["nerve", "blood_vessel"]
    splits = {f["case"]: f["split"] for f in manifest["frames"]}
    subjects = {f["case"]: f["subject"] for f in manifest["frames"]}
    for sample in data:
        frame_id = case_to_frame[sample.name]
        np.testing.assert_array_equal(sample.image, store.image(frame_id))
        np.testing.assert_array_equal(sample.mask, store.current(frame_id).mask)
        assert sample.metadata["split"] == splits[sample.name]
        assert sample.subject == subjects[sample.name]
        assert sample.spacing == pytest.approx((0.15, 0.15))


@pytest.mark.parametrize("fmt, image_format", [("nnunet", "png"), ("coco", "png"), ("labelme", "png"),
                                               ("masks", "png"), ("masks", "tif"), ("slicer", "png")])
def test_every_format_reads_back_with_the_same_masks_and_images(store_frames, tmp_path, fmt, image_format):
    store, frames = store_frames
    out = tmp_path / f"{fmt}-{image_format}"
    result = _export(frames, out, fmt, image_format=image_format)
    assert sum(result.counts.values()) == len(frames) == 12
    data = open_dataset(out)
    expected_format = {"masks": "folder" if image_format == "png" else "kaggle"}.get(fmt, fmt)
    assert data.format == expected_format
    _assert_round_trip(store, frames, out, data)


# -- nnU-Net: its own integrity check, in its own environment ----------------------------------------------------

#: What nnU-Net v2's verify_dataset_integrity imports, pinned, installed with --no-deps into build/nnunet-check.
#: torch, numpy, SimpleITK, scikit-image, tifffile come from the project's .venv through a .pth file: nnU-Net's
#: own requirement on torch would otherwise replace the pinned CPU build.
NNUNET_CHECK_PACKAGES = ("nnunetv2==2.8.1", "acvl-utils==0.2.6", "batchgenerators==0.25.5", "pandas==3.1.1",
                         "nibabel==5.4.2", "blosc2==4.14.1", "numexpr==2.14.2", "msgpack==1.2.4", "ndindex==1.10.1",
                         "httpx==0.28.1")
NNUNET_ENV = REPO / "build" / "nnunet-check"


def _nnunet_python() -> Path:
    """The check environment's python, created (about 20 s, needs PyPI) on first use and reused after."""
    python = NNUNET_ENV / "bin" / "python"
    stamp = NNUNET_ENV / "nerveseg-packages.txt"
    wanted = "\n".join(NNUNET_CHECK_PACKAGES)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(NNUNET_ENV)]]
    try:
        subprocess.run(steps[0], check=True, capture_output=True, text=True, timeout=300)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "zz_nerveseg_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *NNUNET_CHECK_PACKAGES],
                       check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        pytest.fail("could not create the nnU-Net check environment in build/nnunet-check (needs `python -m venv` "
                    f"and PyPI for: {' '.join(NNUNET_CHECK_PACKAGES)}):\n{detail[-2000:]}")
    stamp.write_text(wanted)
    return python


def _verify_nnunet(*folders: Path) -> subprocess.CompletedProcess:
    """Run nnU-Net's verify_dataset_integrity on each folder in one process; prints ``RESULT <folder> ok|failed``."""
    env = dict(os.environ, nnUNet_raw=str(folders[0].parent), nnUNet_preprocessed=str(folders[0].parent),
               nnUNet_results=str(folders[0].parent))
    code = ("import sys\n"
            "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
            "if __name__ == '__main__':\n"
            "    for folder in sys.argv[1:]:\n"
            "        try:\n"
            "            verify_dataset_integrity(folder, num_processes=1)\n"
            "            print('RESULT', folder, 'ok', flush=True)\n"
            "        except Exception as error:\n"
            "            print('RESULT', folder, 'failed', type(error).__name__, error, flush=True)\n")
    return subprocess.run([str(_nnunet_python()), "-c", code, *map(str, folders)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_nnunet_export_passes_nnunets_own_dataset_integrity_check(store_frames, tmp_path):
    import shutil

    from PIL import Image

    store, frames = store_frames
    out = tmp_path / "Dataset501_NerveSeg"
    _export(frames, out, "nnunet")
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "nerve": 1, "blood_vessel": 2}
    assert dataset["numTraining"] == len(list((out / "labelsTr").iterdir()))
    # the check is real: a copy with a label value dataset.json does not declare must fail it
    broken = tmp_path / "Dataset502_Broken"
    shutil.copytree(out, broken)
    label = sorted((broken / "labelsTr").iterdir())[0]
    bad = np.array(Image.open(label))
    bad[0, 0] = 5
    Image.fromarray(bad).save(label)
    checked = _verify_nnunet(out, broken)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output[-3000:]
    assert f"RESULT {out} ok" in checked.stdout, output[-3000:]
    assert f"RESULT {broken} failed RuntimeError" in checked.stdout, output[-3000:]
    assert "Unexpected labels found" in checked.stdout


# -- COCO ----------------------------------------------------------------------------------------------------------

def test_coco_export_loads_in_pycocotools_and_scores_ap_1_against_itself(store_frames, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    store, frames = store_frames
    out = tmp_path / "coco"
    result = _export(frames, out, "coco", fractions={"train": 1.0})
    assert result.counts["train"] == len(frames)
    path = out / "annotations" / "instances_train.json"
    ground_truth = COCO(str(path))
    assert sorted(ground_truth.getCatIds()) == [1, 2]
    annotations = ground_truth.loadAnns(ground_truth.getAnnIds())
    assert annotations and all(a["area"] > 0 and a["iscrowd"] == 0 and len(a["bbox"]) == 4 for a in annotations)
    # one instance per connected component: the synthetic frames have one nerve and one vessel each
    assert len(annotations) == 2 * len(frames)
    detections = ground_truth.loadRes([dict(a, score=1.0) for a in annotations])
    for kind in ("segm", "bbox"):
        evaluation = COCOeval(ground_truth, detections, kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), kind  # AP at IoU 0.5:0.95
        assert evaluation.stats[1] == pytest.approx(1.0), kind  # AP at IoU 0.5


def test_coco_instances_are_connected_components_with_exact_rle(tmp_path):
    from pycocotools import mask as mask_utils

    mask = np.zeros((40, 50), np.uint8)
    mask[2:8, 2:9] = 1
    mask[20:30, 30:45] = 1  # a second nerve region: a second instance
    mask[12, 12] = 2  # a one-pixel vessel
    frame = ExportFrame(frame_id=1, load=lambda: (np.full((40, 50), 90, np.uint8), mask),
                        classes={1: "nerve", 2: "vein"}, subject="s", status="accepted")
    _export([frame], tmp_path / "c", "coco", fractions={"train": 1.0})
    content = json.loads((tmp_path / "c" / "annotations" / "instances_train.json").read_text())
    nerve = [a for a in content["annotations"] if a["category_id"] == 1]
    assert len(nerve) == 2
    assert sorted(a["area"] for a in nerve) == [42, 150]
    assert [c["name"] for c in content["categories"]] == ["nerve", "vein"]
    rebuilt = np.zeros_like(mask)
    for annotation in content["annotations"]:
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        rebuilt[mask_utils.decode(rle) > 0] = annotation["category_id"]
    np.testing.assert_array_equal(rebuilt, mask)


# -- Slicer --------------------------------------------------------------------------------------------------------

def test_slicer_export_is_read_by_slicerio_with_names_label_values_and_terminology(store_frames, tmp_path):
    import slicerio

    store, frames = store_frames
    out = tmp_path / "slicer"
    _export(frames, out, "slicer")
    seg_files = sorted(out.rglob("*.seg.nrrd"))
    assert len(seg_files) == len(frames)
    segmentation = slicerio.read_segmentation(str(seg_files[0]))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert set(segments) == {"Nerve", "Blood vessel"}
    assert segments["Nerve"]["labelValue"] == 1 and segments["Blood vessel"]["labelValue"] == 2
    assert segments["Nerve"]["terminology"]["type"][:2] == ["SCT", "119410002"]
    assert segments["Blood vessel"]["terminology"]["type"][:2] == ["SCT", "59820001"]
    assert segmentation["voxels"].shape == (W, H, 1)  # i, j, k
    assert np.diag(segmentation["ijkToLPS"])[:2] == pytest.approx([-0.15, -0.15])  # RAS spacing 0.15 in LPS
    volume = slicerio.read_volume(str(seg_files[0]).replace(".seg.nrrd", ".nrrd"))
    np.testing.assert_allclose(volume["ijkToLPS"], segmentation["ijkToLPS"])
    nerve = slicerio.extract_segments(segmentation, [("Nerve", 1)])["voxels"]
    frame_id = int(seg_files[0].name.split("_")[1].split(".")[0])
    np.testing.assert_array_equal(nerve[:, :, 0].T, (store.current(frame_id).mask == 1).astype(nerve.dtype))


# -- Labelme -------------------------------------------------------------------------------------------------------

def test_labelme_polygons_per_instance_and_exact_mask_shapes_where_a_polygon_cannot_be_exact(tmp_path):
    mask = np.zeros((60, 80), np.uint8)
    mask[5:25, 5:30] = 1
    mask[10:15, 12:20] = 0  # a hole: no polygon reproduces it
    mask[40:55, 50:75] = 2  # a plain rectangle: a polygon
    mask[30, 40] = 2  # a single pixel
    image = np.random.default_rng(0).integers(0, 255, (60, 80), dtype=np.uint8)
    frame = ExportFrame(frame_id=3, load=lambda: (image, mask), classes={1: "nerve", 2: "artery"}, subject="s")
    out = tmp_path / "lm"
    _export([frame], out, "labelme", fractions={"train": 1.0})
    content = json.loads((out / "train" / "frame_000003.json").read_text())
    assert content["imagePath"] == "frame_000003.png" and (content["imageHeight"], content["imageWidth"]) == (60, 80)
    kinds = sorted((s["label"], s["shape_type"]) for s in content["shapes"])
    assert kinds == [("artery", "mask"), ("artery", "polygon"), ("nerve", "mask")]
    polygon = next(s for s in content["shapes"] if s["shape_type"] == "polygon")
    assert len(polygon["points"]) >= 3
    data = open_dataset(out)
    np.testing.assert_array_equal(data[0].mask, mask)
    np.testing.assert_array_equal(data[0].image, image)


def test_real_usgra_seg_sample_survives_a_labelme_round_trip_exactly(tmp_path):
    from NerveSegLogic.datasets.export import frames_from_dataset
    from NerveSegLogic.resources import sample_dir

    source = open_dataset(sample_dir())
    frames = frames_from_dataset(source)[:6]
    out = tmp_path / "lm"
    _export(frames, out, "labelme")
    back = open_dataset(out)
    by_name = {n: i for i, n in enumerate(back.names())}
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(back[by_name[f"frame_{frame.frame_id:06d}"]].mask, source[i].mask)
