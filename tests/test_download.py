"""kws data download against a local HTTP server: resume, checksum, atomic unpack, offline."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from kws.cli import main
from kws.data.download import COMPLETE, DownloadError, archive_for, download, expected_sha256
from kws.data.speech_commands import SpeechCommands

NAME = "speech_commands_v0.02.tar.gz"
TEST_SET_NAME = "speech_commands_test_set_v0.02.tar.gz"


def make_archive(extra: bytes = b"") -> bytes:
    """A tiny full-archive tar.gz: ten keyword folders, one clip each, plus filler."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"):
            wav = io.BytesIO()
            sf.write(wav, tone(seconds=0.05), 16000, format="WAV")
            info = tarfile.TarInfo(f"./{word}/0cb74144_nohash_0.wav")
            info.size = wav.tell()
            wav.seek(0)
            tar.addfile(info, wav)
        # incompressible filler, so that the archive is big enough to cut in half
        noise = np.random.default_rng(0).bytes(200_000) + extra
        info = tarfile.TarInfo("./LICENSE")
        info.size = len(noise)
        tar.addfile(info, io.BytesIO(noise))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours Range unless told not to; can cut a reply short."""

    def do_GET(self):  # noqa: N802 (the http.server name)
        server = self.server
        wanted = self.headers.get("Range")
        server.ranges.append(wanted)
        if self.path != "/" + server.name:
            self.send_error(404, "no such archive")
            return
        body, start = server.payload, 0
        if wanted and server.honor_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.cut_after is not None:  # send part of it, then drop the connection
            self.wfile.write(body[start : start + server.cut_after])
            server.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.name, httpd.ranges = make_archive(), NAME, []
    httpd.honor_range, httpd.cut_after = True, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/{NAME}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """An address on which nothing listens: connecting fails at once, like offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NAME}"


def quiet(msg: str) -> None:
    pass


def get(server, root: Path, **kw) -> Path:
    kw.setdefault("sha256", sha256(server.payload))
    return download("v0.02", root, url=server.url, log=quiet, **kw)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_download_verify_unpack(server, tmp_path):
    target = get(server, tmp_path)
    assert target == tmp_path / "speech_commands_v0.02"
    assert (target / COMPLETE).is_file() and (tmp_path / NAME).is_file()
    assert SpeechCommands(target, "sc10").layout == "full"
    assert server.ranges == [None]
    # Done is done: no second request.
    assert get(server, tmp_path) == target and server.ranges == [None]
    assert leftovers(tmp_path) == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_after = len(server.payload) // 2
    with pytest.raises(DownloadError, match="rerun to resume"):
        get(server, tmp_path)
    part = tmp_path / (NAME + ".part")
    assert part.stat().st_size == len(server.payload) // 2
    assert not (tmp_path / "speech_commands_v0.02").exists()
    get(server, tmp_path)
    assert server.ranges == [None, f"bytes={len(server.payload) // 2}-"]
    assert (tmp_path / NAME).read_bytes() == server.payload and not part.exists()


def test_server_without_range_support_starts_over(server, tmp_path):
    server.honor_range = False
    (tmp_path / (NAME + ".part")).write_bytes(b"stale bytes from another file")
    get(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == server.payload


def test_complete_part_file_is_used(server, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(server.payload)
    get(server, tmp_path)  # the server answers 416: nothing past what we have
    assert (tmp_path / "speech_commands_v0.02" / COMPLETE).is_file()


def test_checksum_mismatch_unpacks_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256 is .*expected 0000.*deleted it"):
        get(server, tmp_path, sha256="0" * 64)
    assert not (tmp_path / "speech_commands_v0.02").exists()
    assert not (tmp_path / NAME).exists() and leftovers(tmp_path) == []
    # Without --sha256 the built-in checksum of the real archive is used, and fails too.
    with pytest.raises(DownloadError, match=f"expected {archive_for('v0.02').sha256}"):
        download("v0.02", tmp_path, url=server.url, log=quiet)


def test_damaged_archive_leaves_no_half_unpacked_folder(tmp_path):
    good = make_archive()
    damaged = good[: len(good) // 2]  # the checksum matches, the archive is cut off
    (tmp_path / NAME).write_bytes(damaged)
    stale = tmp_path / ".speech_commands_v0.02.abc.partial"  # from a killed earlier run
    (stale / "yes").mkdir(parents=True)
    with pytest.raises(DownloadError, match="cannot unpack"):
        download("v0.02", tmp_path, sha256=sha256(damaged), url="http://127.0.0.1:9/x", log=quiet)
    assert not (tmp_path / "speech_commands_v0.02").exists()
    assert leftovers(tmp_path) == []


def test_archive_escaping_its_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    root = tmp_path / "root"
    root.mkdir()
    (root / NAME).write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError, match="cannot unpack"):
        download("v0.02", root, sha256=sha256(buffer.getvalue()), log=quiet)
    assert not (tmp_path / "escaped.txt").exists() and leftovers(root) == []


def test_offline_fails_fast_and_says_where_to_put_the_archive(tmp_path, closed_port_url):
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download("v0.02", tmp_path, url=closed_port_url, timeout=2, log=quiet)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "cannot reach" in message and str(tmp_path / NAME) in message
    assert "place it at" in message and "SHA-256" in message


def test_archive_placed_by_hand_is_verified_and_unpacked(tmp_path, closed_port_url):
    payload = make_archive()
    (tmp_path / NAME).write_bytes(payload)
    target = download("v0.02", tmp_path, sha256=sha256(payload), url=closed_port_url, log=quiet)
    assert (target / COMPLETE).is_file()
    # A placed archive that does not match is kept for the user to look at.
    other = tmp_path / "other"
    other.mkdir()
    (other / NAME).write_bytes(payload + b"x")
    with pytest.raises(DownloadError, match="replace or delete it"):
        download("v0.02", other, sha256=sha256(payload), url=closed_port_url, log=quiet)
    assert (other / NAME).exists()


def test_unknown_checksum_is_recorded_then_enforced(tmp_path, closed_port_url):
    payload = make_archive()
    (tmp_path / TEST_SET_NAME).write_bytes(payload)
    messages = []
    target = download("v0.02", tmp_path, test_set=True, url=closed_port_url, log=messages.append)
    assert target.name == "speech_commands_test_set_v0.02"
    sidecar = tmp_path / (TEST_SET_NAME + ".sha256")
    assert sidecar.read_text().split()[0] == sha256(payload)
    assert any("no published SHA-256" in m for m in messages)
    # Another archive under the same name no longer passes.
    other = tmp_path / "again"
    other.mkdir()
    (other / TEST_SET_NAME).write_bytes(payload + b"!")
    (other / (TEST_SET_NAME + ".sha256")).write_text(sidecar.read_text())
    with pytest.raises(DownloadError, match="SHA-256"):
        download("v0.02", other, test_set=True, url=closed_port_url, log=quiet)
    assert expected_sha256(other / TEST_SET_NAME, None, None) == sha256(payload)


def test_folder_without_marker_is_not_overwritten(server, tmp_path):
    (tmp_path / "speech_commands_v0.02" / "yes").mkdir(parents=True)
    with pytest.raises(DownloadError, match="no .complete marker"):
        get(server, tmp_path)
    assert server.ranges == []


def test_http_error_and_bad_arguments(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("v0.02", tmp_path, url=server.url + ".missing", sha256="a" * 64, log=quiet)
    with pytest.raises(ValueError, match="unknown Speech Commands version"):
        download("v0.03", tmp_path, log=quiet)
    with pytest.raises(ValueError, match="64 hex digits"):
        download("v0.02", tmp_path, sha256="abc", log=quiet)


def test_cli_download(server, tmp_path, capsys, closed_port_url):
    args = ["data", "download", "--version", "v0.02", "--root", str(tmp_path)]
    assert main([*args, "--url", server.url, "--sha256", sha256(server.payload)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "speech_commands_v0.02")
    offline = tmp_path / "offline"
    assert main(["data", "download", "--version", "v0.01", "--root", str(offline),
                 "--url", closed_port_url, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "speech_commands_v0.01.tar.gz" in err
