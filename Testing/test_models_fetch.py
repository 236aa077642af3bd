"""``nerveseg models fetch``: released weights downloaded from a real HTTP server started here, resumed after a cut
connection, refused on a checksum mismatch, and never left half-written under their final name."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from NerveSegLogic import cli
from NerveSegLogic.models import registry
from NerveSegLogic.models.card import write_card
from NerveSegLogic.models.fetch import FetchError, destination, fetch_weights, install_from_file
from NerveSegLogic.models.weights import WeightsError

NAME = "smistad-unet"  # a small architecture; its shipped card lists no weights, the test gives it some


class Server:
    """A local HTTP server for one file. ``cut_after``: close the connection after that many bytes of the next
    response(s) (``cuts`` times); ``ignore_range``: answer 200 with the whole file; ``body``: serve other bytes."""

    def __init__(self, body: bytes):
        self.body = body
        self.cut_after = None
        self.cuts = 0
        self.ignore_range = False
        self.status = None
        self.requests = []  # the Range header of each request (None when absent)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                ranged = self.headers.get("Range")
                outer.requests.append(ranged)
                if outer.status:
                    self.send_error(outer.status)
                    return
                body, first = outer.body, 0
                if ranged and not outer.ignore_range:
                    first = int(ranged.split("=")[1].split("-")[0])
                    if first >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[first:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if outer.cut_after is not None and outer.cuts > 0:
                    outer.cuts -= 1
                    self.wfile.write(rest[:outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(rest)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models-v1/{NAME}.safetensors"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def release(tmp_path, monkeypatch):
    """A resources folder with one card whose weights are a release download on a local server, and an empty
    user models folder. Yields (card, server, weights bytes)."""
    import torch

    monkeypatch.setenv("NERVESEG_MODELS_DIR", str(tmp_path / "user"))
    resources = tmp_path / "Resources"
    (resources / "Models").mkdir(parents=True)
    torch.manual_seed(0)
    shipped = registry.card(NAME)
    model = registry.build_from_card(shipped)
    weights_file = tmp_path / "built.safetensors"
    sha = registry.save_weights(model, weights_file, dtype="float16")
    body = weights_file.read_bytes()
    server = Server(body)
    data = shipped.to_json()
    data["weights"] = {"file": f"{NAME}.safetensors", "sha256": sha, "dtype": "float16", "url": server.url,
                       "size": len(body)}
    card = write_card(data, resources / "Models" / f"{NAME}.json")
    monkeypatch.setenv("NERVESEG_RESOURCES", str(resources))
    yield card, server, body
    server.close()


def test_card_without_local_weights_says_how_to_fetch(release):
    card, server, _ = release
    assert not card.has_weights
    with pytest.raises(WeightsError, match=f"nerveseg models fetch {NAME}"):
        registry.load_from_card(card)
    assert server.requests == []  # loading never downloads by itself


def test_fetch_downloads_checks_and_the_model_loads(release):
    card, server, body = release
    path = fetch_weights(card, retries=0)
    assert path == destination(card) and path.read_bytes() == body
    assert card.has_weights and card.weights_path == path  # found through the card now
    model = registry.load_from_card(card)  # the card's sha256 checked again on load
    assert sum(p.numel() for p in model.parameters()) > 0
    assert fetch_weights(card) == path and len(server.requests) == 1  # present: no second download


def test_cut_connection_is_resumed_with_a_range_request(release):
    card, server, body = release
    server.cut_after, server.cuts = len(body) // 3, 1
    path = fetch_weights(card, retries=2)
    assert path.read_bytes() == body
    assert server.requests == [None, f"bytes={len(body) // 3}-"]
    assert not list(path.parent.glob("*.part*"))


def test_interrupted_fetch_resumes_in_a_later_run(release):
    card, server, body = release
    server.cut_after, server.cuts = 1000, 5  # every try of this run is cut
    with pytest.raises(FetchError, match="run the same command again to resume"):
        fetch_weights(card, retries=1)
    final = destination(card)
    part = final.with_name(final.name + ".part")
    assert not final.exists() and part.stat().st_size == 2000  # two tries, 1000 bytes each, appended
    server.cuts = 0
    assert fetch_weights(card, retries=0).read_bytes() == body
    assert server.requests[-1] == "bytes=2000-" and not part.exists()


def test_server_ignoring_range_restarts_from_the_first_byte(release):
    card, server, body = release
    final = destination(card)
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(body[:500])
    server.ignore_range = True
    assert fetch_weights(card, retries=0).read_bytes() == body  # not the 500 bytes twice


def test_mismatching_file_is_refused_and_deleted(release):
    card, server, body = release
    server.body = body[:-10] + b"x" * 10  # same size, other bytes
    with pytest.raises(FetchError, match="refused and deleted"):
        fetch_weights(card, retries=0)
    assert not destination(card).parent.exists() or not any(destination(card).parent.iterdir())
    assert not card.has_weights


def test_http_error_names_the_address(release):
    card, server, _ = release
    server.status = 404
    with pytest.raises(FetchError, match=r"models-v1/smistad-unet.safetensors: HTTP 404"):
        fetch_weights(card, retries=3)
    assert len(server.requests) == 1  # a 404 is not retried


def test_unreachable_server_is_retried_then_reported(release):
    card, server, _ = release
    server.close()
    with pytest.raises(FetchError, match="failed after 2 tries"):
        fetch_weights(card, retries=1)


def test_install_from_file_checks_the_checksum(release, tmp_path):
    card, server, body = release
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(body[:-1] + b"\0")
    with pytest.raises(FetchError, match="refused, nothing installed"):
        install_from_file(card, wrong)
    assert not card.has_weights
    right = tmp_path / "copy.safetensors"
    right.write_bytes(body)
    assert install_from_file(card, right).read_bytes() == body
    assert card.has_weights and server.requests == []


def test_cli_fetch_list_and_errors(release, capsys, tmp_path):
    card, server, body = release
    assert cli.main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == NAME)
    assert row["weights"] is False and row["weights_url"] == server.url
    assert cli.main(["models", "fetch", NAME]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: fetched" in out and "sha256 checked" in out
    assert hashlib.sha256(destination(card).read_bytes()).hexdigest() == card.weights["sha256"]
    assert cli.main(["models", "fetch", NAME]) == 0
    assert "present at" in capsys.readouterr().out
    assert cli.main(["models", "fetch", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert cli.main(["models", "fetch", NAME, "--from", str(tmp_path / "absent.safetensors"), "--force"]) == 1
    assert "is not a file" in capsys.readouterr().err
    assert cli.main(["models", "fetch"]) == 1
    assert "or --all" in capsys.readouterr().err


def test_the_panel_controller_offers_and_fetches_the_chosen_models_weights(release):
    """What the Slicer panel does when a model whose weights are a download is chosen (NerveSeg.py shows the
    question and a progress dialog around these two calls)."""
    from NerveSegLogic.live.controller import LiveController

    card, server, body = release
    controller = LiveController()
    summary = controller.select_model(NAME)
    assert "a release download" in summary and f"{len(body) / 1e6:.1f} MB" in summary
    assert controller.weights_to_fetch() == {"name": NAME, "url": server.url, "size": len(body)}
    seen = []
    path = controller.fetch_weights(lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == body and seen[-1] == (len(body), len(body))
    assert controller.weights_to_fetch() is None and controller.card.has_weights

    class Stop(Exception):
        pass

    server.cut_after = None
    destination(card).unlink()
    controller.select_model(NAME)

    def cancel(done, total):
        if done > 100_000:
            raise Stop()

    with pytest.raises(Stop):  # the panel's Cancel: the part stays for the next try, nothing final appears
        controller.fetch_weights(cancel)
    assert not destination(card).exists()
    assert destination(card).with_name(destination(card).name + ".part").stat().st_size > 100_000
    assert controller.fetch_weights().read_bytes() == body
