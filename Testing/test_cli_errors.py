"""Bad input on the command line gets one clear line naming what was wrong and exit code 1, not a traceback."""

from NerveSegLogic import cli
from NerveSegLogic.resources import sample_dir

FRAME = str(sorted((sample_dir() / "images").glob("*.png"))[0])


def test_unknown_model_names_the_valid_ones(capsys, tmp_path):
    code = cli.main(["predict", "--model", "no-such-model", "--out", str(tmp_path / "out"), FRAME])
    err = capsys.readouterr().err
    assert code == 1
    assert "unknown model 'no-such-model'" in err and "smistad-unet" in err
    assert "Traceback" not in err


def test_device_this_machine_lacks_is_refused_clearly(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["predict", "--device", "cuda", "--out", str(tmp_path / "out"), FRAME])
    err = capsys.readouterr().err
    assert code == 1
    assert "no CUDA GPU" in err and "--device cpu" in err


def _folder_with_a_corrupt_image(tmp_path):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    frames = sorted((sample_dir() / "images").glob("*.png"))[:2]
    shutil.copy(frames[0], folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG cut short
    shutil.copy(frames[1], folder / "c.png")
    return folder


def test_predict_goes_on_past_a_corrupt_image_names_it_and_exits_1_with_a_summary(capsys, tmp_path):
    folder = _folder_with_a_corrupt_image(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["predict", "--out", str(out), str(folder)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "b.png" in err and "wrote 2 of 3" in err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "c.png"]


def test_predict_on_a_full_disk_exits_1_and_claims_no_file(capsys, tmp_path, monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)  # what OpenCV returns when the disk is full
    out = tmp_path / "out"
    code = cli.main(["predict", "--out", str(out), FRAME])
    err = capsys.readouterr().err
    assert code == 1 and "could not be written" in err and "wrote 0 of 1" in err
    assert list((out / "masks").iterdir()) == []


def test_predict_refuses_a_sliver_image_from_its_header(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    sliver = tmp_path / "sliver.png"
    Image.fromarray(np.zeros((20000, 1), np.uint8)).save(sliver)
    code = cli.main(["predict", "--out", str(tmp_path / "out"), str(sliver)])
    err = capsys.readouterr().err
    assert code == 1 and "sliver.png: 1 x 20000 pixels" in err
