"""The search server's HTTP API on a real collection: text and image searches answer what
:class:`Searcher` answers, thumbnails come back from the collection's source, bad requests
get a JSON message, and the ``serve`` command refuses a busy port and stops on Ctrl-C."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from mmcontrast.cli import main
from mmcontrast.search.searcher import Searcher
from mmcontrast.search.serve import SearchServer, is_local, serve


def call(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (or, with ``data``, a POST), errors included."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def call_json(url: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    status, kind, body = call(url, data)
    assert kind == "application/json", body[:200]
    return status, json.loads(body)


def searcher_of(server: SearchServer) -> Searcher:
    assert server.app is not None
    return server.app.searcher


def searcher_k(server: SearchServer) -> int:
    assert server.app is not None
    return server.app.k


def without_url(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(hit["image_url"] == f"/image/{hit['row']}" for hit in hits)
    return [{key: value for key, value in hit.items() if key != "image_url"} for hit in hits]


def test_text_search_answers_what_the_searcher_answers(served: SearchServer) -> None:
    status, answer = call_json(f"{served.url}/api/search?q={quote('a red circle')}&k=4")
    assert status == 200 and answer["query"] == "a red circle" and answer["k"] == 4
    hits = answer["hits"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    expected = searcher_of(served).search_text("a red circle", k=4)
    assert without_url(hits) == [hit.to_dict() for hit in expected]
    _, default = call_json(f"{served.url}/api/search?q=a+blue+star")
    assert len(default["hits"]) == searcher_k(served)


def test_concurrent_queries_get_their_own_answers(served: SearchServer) -> None:
    queries = [f"a {colour} {shape}" for colour in ("red", "blue") for shape in ("star", "square")]
    expected = {q: [h.to_dict() for h in searcher_of(served).search_text(q, k=3)] for q in queries}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda q: call_json(f"{served.url}/api/search?q={quote(q)}&k=3"), queries * 4)
        )
    for query, (status, answer) in zip(queries * 4, answers, strict=True):
        assert status == 200 and answer["query"] == query
        assert without_url(answer["hits"]) == expected[query]


def test_image_search_finds_the_image_itself(served: SearchServer, shapes_dir: Path) -> None:
    name = searcher_of(served).rows[3]["image_path"]
    data = (shapes_dir / "train" / name).read_bytes()
    status, answer = call_json(f"{served.url}/api/search_image?k=3", data)
    assert status == 200 and answer["query"] is None
    hits = answer["hits"]
    assert hits[0]["score"] == pytest.approx(1.0, rel=1e-4)
    assert name in {hit["image_path"] for hit in hits if hit["score"] > 1 - 1e-4}  # twins tie
    assert without_url(hits) == [
        hit.to_dict() for hit in searcher_of(served).search_image(data, k=3)
    ]


def test_thumbnails_come_back_from_the_source(served: SearchServer, shapes_dir: Path) -> None:
    meta = searcher_of(served).rows[5]
    status, kind, body = call(f"{served.url}/image/{meta['row']}")
    assert status == 200 and kind == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(body))
    original = Image.open(shapes_dir / "train" / meta["image_path"]).convert("RGB")
    assert thumbnail.size == original.size  # 32 px: under the thumbnail size, not enlarged
    difference = np.abs(np.asarray(thumbnail, float) - np.asarray(original, float)).mean()
    assert difference < 8  # JPEG's loss only


def test_bad_requests_get_a_json_message(served: SearchServer) -> None:
    cases = [
        ("/api/search_image", b"this is not an image", 400, "cannot search with this file"),
        ("/api/search_image", b"", 400, "no image"),
        ("/api/search?q=%20", None, 400, "type something to search for"),
        ("/api/search?q=red&k=0", None, 400, "k must be a whole number from 1 to 1000"),
        ("/api/search?q=red&k=ten", None, 400, "got 'ten'"),
        ("/api/search?q=red&k=%C2%B2", None, 400, "got '²'"),  # isdigit() takes '²'; int() not
        ("/image/9999", None, 404, "row 9999 is not in"),
        ("/image/-1", None, 404, "use /image/ROW"),
        ("/nowhere", None, 404, "no page /nowhere"),
        ("/api/search", b"\x89PNG", 404, "POST images to /api/search_image"),
    ]
    for path, data, status, message in cases:
        got, answer = call_json(served.url + path, data)
        assert (got, list(answer)) == (status, ["error"]), path
        assert message in answer["error"], (path, answer["error"])
        assert "Traceback" not in answer["error"]


def test_an_image_over_the_upload_limit_is_refused(
    served: SearchServer, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mmcontrast.search.serve.MAX_UPLOAD", 64)
    data = (shapes_dir / "train" / searcher_of(served).rows[0]["image_path"]).read_bytes()
    status, answer = call_json(f"{served.url}/api/search_image", data)
    assert status == 413 and "MiB this page takes: send a smaller copy" in answer["error"]


def test_the_page_and_the_info(served: SearchServer) -> None:
    status, kind, body = call(served.url + "/")
    assert status == 200 and kind == "text/html; charset=utf-8"
    page = body.decode()
    for element in ('id="query"', 'id="search"', 'id="file"', 'id="results"', 'id="error"'):
        assert element in page
    assert "http://" not in page.split("<!--", 1)[0] + page.split("-->", 1)[1]  # nothing remote
    _, info = call_json(served.url + "/api/info")
    assert info == {
        "collection": "shapes",
        "model": searcher_of(served).model.spec,
        "count": 32,
        "k": searcher_k(served),
        "text": True,
    }


def test_a_busy_port_is_refused_with_a_clear_message(
    indexed_collection: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        capsys.readouterr()
        assert main(["serve", str(indexed_collection), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"mmcontrast serve: error: port {port} is already in use on 127.0.0.1" in err
    assert "--port 0 for any free one" in err and "Traceback" not in err
    assert main(["serve", str(indexed_collection), "--port", "70000"]) == 2
    assert "port must be from 0 to 65535" in capsys.readouterr().err


def test_serve_prints_its_address_and_stops_on_ctrl_c(indexed_collection: Path) -> None:
    command = [sys.executable, "-m", "mmcontrast", "serve", str(indexed_collection)]
    with subprocess.Popen(
        [*command, "--port", "0", "--device", "cpu", "-k", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            found = re.fullmatch(
                rf"serving {re.escape(str(indexed_collection))} at (http://127\.0\.0\.1:\d+) "
                r"\(Ctrl-C to stop\)\n",
                line,
            )
            assert found, line + (process.stderr.read() if process.stderr else "")
            _, answer = call_json(found[1] + "/api/search?q=a+green+square")
            assert len(answer["hits"]) == 3
        finally:
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "mmcontrast serve: interrupted" in err and "Traceback" not in err


def test_listening_beyond_this_machine_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost")
    assert not is_local("0.0.0.0") and not is_local("") and not is_local("192.168.1.5")
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        with pytest.raises(ValueError, match="embed a collection"):
            serve(tmp_path / "nothing", host="0.0.0.0", port=0)  # fails before serving
    assert "the page has no authentication" in caplog.text


def raw(server: SearchServer, request: bytes) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a request sent as these bytes (headers urllib will not send)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_other_host_names_are_refused(served: SearchServer) -> None:
    """DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1 sends
    ``Host: attacker.example``; only this machine's own names are answered."""
    for host in ("attacker.example", f"attacker.example:{served.port}", "127.0.0.1.nip.io"):
        status, answer = raw(served, f"GET /api/info HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert status == 403 and list(answer) == ["error"], host
        assert "answers requests for localhost only" in answer["error"]
    upload = b"POST /api/search_image HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 4\r\n\r\nPNG!"
    assert raw(served, upload)[0] == 403
    for host in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST"):
        for name in (host, f"{host}:{served.port}"):
            request = f"GET /api/info HTTP/1.1\r\nHost: {name}\r\n\r\n".encode()
            status, answer = raw(served, request)
            assert status == 200 and answer["count"] == 32, name


def test_digits_other_than_ascii_are_refused_not_failed(served: SearchServer) -> None:
    """'²' (one byte in the ISO-8859-1 that http.server decodes the request with) passes
    ``str.isdigit`` but not ``int``: a 404 or 411, not a 500."""
    status, answer = raw(served, b"GET /image/\xb2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 404 and "use /image/ROW" in answer["error"]
    post = b"POST /api/search_image HTTP/1.1\r\nHost: localhost\r\nContent-Length: \xb2\r\n\r\n"
    status, answer = raw(served, post)
    assert status == 411 and "Content-Length" in answer["error"]


def test_a_bad_device_is_a_one_line_error(
    indexed_collection: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["search", str(indexed_collection), "a red circle", "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'bogus': use cpu, cuda or cuda:N" in err and "Traceback" not in err
