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
