"""`nerveseg models list | info | export-onnx`."""

import argparse
import json

import onnx
import pytest

from NerveSegLogic.commands import models as models_command
from NerveSegLogic.models import registry


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="nerveseg")
    models_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_json_has_the_contract_fields(capsys):
    code, out, _ = run(["models", "list", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [row["name"] for row in rows] == registry.names()
    for row in rows:
        assert {"name", "task", "classes", "parameters", "weights", "default", "cpu_ms_per_frame"} <= set(row)
        assert row["task"] in ("semantic", "instance")
        assert isinstance(row["parameters"], int) and row["parameters"] > 0
        assert isinstance(row["weights"], bool) and isinstance(row["default"], bool)
        assert row["classes"] == [c.key for c in registry.card(row["name"]).classes]
    smistad = next(row for row in rows if row["name"] == "smistad-unet")
    assert smistad["parameters"] == 1966339
    assert sum(row["default"] for row in rows) == 1


def test_list_table_shows_every_model(capsys):
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0
    for name in registry.names():
        assert name in out


def test_info_prints_the_card(capsys):
    code, out, _ = run(["models", "info", "smistad-unet"], capsys)
    assert code == 0
    assert json.loads(out) == registry.card("smistad-unet").to_json()


def test_info_of_an_unknown_model_lists_the_valid_names(capsys):
    code, _, err = run(["models", "info", "nope"], capsys)
    assert code == 2 and "smistad-unet" in err


def test_export_onnx_writes_a_graph(tmp_path, capsys, resources_without_weights):
    out_file = tmp_path / "smistad.onnx"
    code, _, err = run(["models", "export-onnx", "smistad-unet", "--out", str(out_file)], capsys)
    assert code == 1 and "ships no weights" in err and not out_file.exists()
    code, out, _ = run(["models", "export-onnx", "smistad-unet", "--out", str(out_file), "--allow-random-weights"],
                       capsys)
    assert code == 0 and str(out_file) in out
    onnx.checker.check_model(onnx.load(str(out_file)))


def test_registering_the_command_imports_no_torch():
    import subprocess
    import sys

    code = ("import argparse, sys; from NerveSegLogic.commands import models; "
            "models.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
