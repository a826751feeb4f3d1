"""`exvae download`: mirrors, checksums, validation by the readers, atomic placement; all
against a local HTTP server serving small files the tests generate."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from exvae_fast.cli import main
from exvae_fast.data import download as dl
from exvae_fast.data import load_dataset

from test_data_idx import make_idx_folder


class Server:
    """Serves `files` {url path: bytes} on 127.0.0.1; paths under /short/ announce more bytes
    than they send (a dropped connection); everything else is a 404. Counts requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 1000 if self.path.startswith("/short/") else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture
def mnist_source(server, tmp_path, monkeypatch):
    """MNIST-shaped IDX files on the server (first mirror 404s), with their real MD5s."""
    raw = tmp_path / "generated"
    make_idx_folder(raw, compress=True)
    remotes = []
    for path in sorted(raw.iterdir()):
        body = path.read_bytes()
        server.files[f"/b/{path.name}"] = body
        remotes.append(dl.RemoteFile(path.name, (f"{server.url}/a/{path.name}", f"{server.url}/b/{path.name}"),
                                     md5(body)))
    monkeypatch.setitem(dl.SOURCES, "mnist", tuple(remotes))
    return raw


def test_mnist_download_falls_back_to_the_next_mirror_and_loads(server, mnist_source, tmp_path):
    root = tmp_path / "data" / "mnist"
    paths = dl.download_dataset("mnist", root, progress=False)
    assert sorted(p.name for p in paths) == sorted(p.name for p in mnist_source.iterdir())
    for p in paths:
        assert p.read_bytes() == (mnist_source / p.name).read_bytes()
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    expected = load_dataset("mnist", mnist_source, n_validation=2)
    got = load_dataset("mnist", root, n_validation=2)
    assert got.train.equal(expected.train) and got.test_labels.equal(expected.test_labels)
    # a second call finds valid files and fetches nothing
    before = len(server.requests)
    dl.download_dataset("mnist", root, progress=False)
    assert len(server.requests) == before
    dl.download_dataset("mnist", root, progress=False, force=True)
    assert len(server.requests) == before + 2 * len(paths)  # 404 + success per file


def test_a_corrupt_local_file_is_fetched_again(server, mnist_source, tmp_path):
    root = tmp_path / "mnist"
    dl.download_dataset("mnist", root, progress=False)
    victim = root / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(b"garbage")
    dl.download_dataset("mnist", root, progress=False)
    assert victim.read_bytes() == (mnist_source / victim.name).read_bytes()


def test_checksum_mismatch_and_short_bodies_never_leave_a_file(server, tmp_path, monkeypatch):
    body = gzip.compress(b"some bytes")
    server.files["/x/f.gz"] = body
    server.files["/short/f.gz"] = body
    monkeypatch.setitem(dl.SOURCES, "mnist", (dl.RemoteFile(
        "f.gz", (f"{server.url}/x/f.gz", f"{server.url}/short/f.gz"), md5(b"other bytes")),))
    root = tmp_path / "mnist"
    root.mkdir()
    (root / "f.gz").write_bytes(b"the user's old file")
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset("mnist", root, progress=False)
    message = str(err.value)
    assert "differs from the published" in message and "/x/f.gz" in message and "/short/f.gz" in message
    assert "by hand" in message
    assert [p.name for p in root.iterdir()] == ["f.gz"]  # no temp file left behind ...
    assert (root / "f.gz").read_bytes() == b"the user's old file"  # ... and the old file untouched


def write_chardata(path: Path, n_train: int = 1400, n_test: int = 20) -> None:
    """A chardata.mat large enough for the reader's default validation split (1,345 rows)."""
    rng = np.random.default_rng(0)
    savemat(path, {"data": rng.random((784, n_train), dtype=np.float32),
                   "testdata": rng.random((784, n_test), dtype=np.float32)})


def test_files_without_checksum_are_validated_by_their_reader(server, tmp_path, monkeypatch):
    write_chardata(tmp_path / "good.mat")
    server.files["/bad/chardata.mat"] = b"not a MATLAB file"
    server.files["/good/chardata.mat"] = (tmp_path / "good.mat").read_bytes()
    monkeypatch.setitem(dl.SOURCES, "omniglot", (dl.RemoteFile(
        "chardata.mat", (f"{server.url}/bad/chardata.mat", f"{server.url}/good/chardata.mat"), None),))
    root = tmp_path / "omniglot"
    (path,) = dl.download_dataset("omniglot", root, progress=False)
    assert path.read_bytes() == (tmp_path / "good.mat").read_bytes()
    assert load_dataset("omniglot", root).train.shape == (1400 - 1345, 784)
    assert [p.name for p in root.iterdir()] == ["chardata.mat"]
    # only the bad mirror left: it is refused, the good file stays
    monkeypatch.setitem(dl.SOURCES, "omniglot", (dl.RemoteFile(
        "chardata.mat", (f"{server.url}/bad/chardata.mat",), None),))
    with pytest.raises(dl.DownloadError, match="not a valid chardata.mat") as err:
        dl.download_dataset("omniglot", root, progress=False, force=True)
    assert path.read_bytes() == (tmp_path / "good.mat").read_bytes()
    assert "Still missing" not in str(err.value)  # the kept file is valid: nothing is missing


REFUSED = b"cos\nsystem\n(S'true'\ntR."  # a pickle calling os.system


def good_pickle() -> bytes:
    images = np.random.default_rng(0).integers(0, 256, (500, 560), dtype=np.uint8)
    return pickle.dumps([images], protocol=2)


def test_frey_faces_pickle_is_validated(server, tmp_path, monkeypatch):
    server.files["/frey.pkl"] = good_pickle()
    monkeypatch.setitem(dl.SOURCES, "frey-faces", (dl.RemoteFile("freyfaces.pkl", (f"{server.url}/frey.pkl",), None),))
    dl.download_dataset("frey-faces", tmp_path / "frey", progress=False)
    assert load_dataset("frey-faces", tmp_path / "frey").test.shape == (200, 560)


def test_names_that_cannot_be_downloaded(tmp_path):
    with pytest.raises(ValueError, match="img_align_celeba"):
        dl.download_dataset("celeba", tmp_path)
    with pytest.raises(ValueError, match="can be downloaded: mnist, fashion-mnist, omniglot, frey-faces"):
        dl.download_dataset("cifar10", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        dl.download_dataset("mnist", tmp_path / "file")


def test_published_checksums_are_well_formed():
    for name, remotes in dl.SOURCES.items():
        for r in remotes:
            assert r.urls and all(u.startswith(("http://", "https://")) and u.endswith(r.name) for u in r.urls), name
            assert r.md5 is None or (len(r.md5) == 32 and int(r.md5, 16) >= 0), name
    assert all(r.md5 for r in dl.SOURCES["mnist"] + dl.SOURCES["fashion-mnist"])


def test_cli_download(server, mnist_source, tmp_path, capsys):
    root = tmp_path / "mnist"
    assert main(["download", "mnist", str(root), "--no-progress"]) == 0
    assert f"train with --set data.root={root}" in capsys.readouterr().out
    assert main(["download", "celeba", str(tmp_path / "c")]) == 2
    assert "img_align_celeba" in capsys.readouterr().err


def test_a_missing_data_set_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"`exvae download mnist {tmp_path / 'nope'}` fetches it"):
        load_dataset("mnist", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="img_align_celeba.zip"):
        load_dataset("celeba", tmp_path / "nope")


def test_a_refused_pickle_on_a_mirror_falls_back_to_the_next(server, tmp_path, monkeypatch):
    server.files["/evil/freyfaces.pkl"] = REFUSED
    server.files["/good/freyfaces.pkl"] = good_pickle()
    monkeypatch.setitem(dl.SOURCES, "frey-faces", (dl.RemoteFile(
        "freyfaces.pkl", (f"{server.url}/evil/freyfaces.pkl", f"{server.url}/good/freyfaces.pkl"), None),))
    root = tmp_path / "frey"
    (path,) = dl.download_dataset("frey-faces", root, progress=False)
    assert path.read_bytes() == server.files["/good/freyfaces.pkl"]
    assert [p.name for p in root.iterdir()] == ["freyfaces.pkl"]
    assert load_dataset("frey-faces", root).test.shape == (200, 560)


def test_an_existing_refused_pickle_is_fetched_again(server, tmp_path, monkeypatch):
    server.files["/good/freyfaces.pkl"] = good_pickle()
    monkeypatch.setitem(dl.SOURCES, "frey-faces", (dl.RemoteFile(
        "freyfaces.pkl", (f"{server.url}/good/freyfaces.pkl",), None),))
    root = tmp_path / "frey"
    root.mkdir()
    (root / "freyfaces.pkl").write_bytes(REFUSED)
    (path,) = dl.download_dataset("frey-faces", root, progress=False)
    assert path.read_bytes() == server.files["/good/freyfaces.pkl"]


def test_a_failed_download_names_every_missing_file_and_leaves_no_empty_folder(server, mnist_source,
                                                                               tmp_path, monkeypatch):
    """Every mirror down: the error lists all the files still missing (not only the first that
    failed), and the folders the call created are removed again, so no empty data folder
    suggests a download happened."""
    dead = tuple(dl.RemoteFile(r.name, (f"{server.url}/gone/{r.name}",), r.md5) for r in dl.SOURCES["mnist"])
    monkeypatch.setitem(dl.SOURCES, "mnist", dead)
    root = tmp_path / "data" / "mnist"
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset("mnist", root, progress=False)
    message = str(err.value)
    assert "Still missing" in message
    assert all(r.name in message.split("Still missing")[1] for r in dead)
    assert not (tmp_path / "data").exists()
    # a folder that already existed is the user's: kept, as are files already there
    root.mkdir(parents=True)
    first = dead[0].name
    (root / first).write_bytes((mnist_source / first).read_bytes())
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset("mnist", root, progress=False)
    missing = str(err.value).split("Still missing")[1]
    assert first not in missing and all(r.name in missing for r in dead[1:])
    assert [p.name for p in root.iterdir()] == [first]


def test_progress_into_a_log_file_is_plain_lines(server, mnist_source, tmp_path, capfd):
    """stderr not a terminal (pytest's capture): each file's download ends in one line, no
    carriage-return bar updates."""
    dl.download_dataset("mnist", tmp_path / "mnist", progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert sorted(line.split(":")[0] for line in err.splitlines()) == sorted(
        f"download {p.name}" for p in mnist_source.iterdir())
