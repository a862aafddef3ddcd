"""``mmsafe view``: the local server over a synthetic run of 1,050 items — exact paging and filtering through
``/api/items``, images only when they are images, the Host check, GET/HEAD only, the headers, and the page
working through the API in headless Chromium."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from _browse_data import grid_store
from _browser import browser
from mmsafe.errors import StoreError
from mmsafe.report.items import ItemReader
from mmsafe.report.serve import ViewServer
from mmsafe.types import Image

N = 525  # samples per attack: 1,050 items


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "run"
    with grid_store(path, n_samples=N) as store:
        store.put_images([Image.from_bytes(b"<svg onload=alert(1)>", source="not an image")])
    return path


@pytest.fixture(scope="module")
def server(run) -> Iterator[ViewServer]:
    app = ViewServer(run, port=0)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    yield app
    app.shutdown()
    thread.join(10)
    app.close()


def _get(app: ViewServer, path: str, *, method: str = "GET", host: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{app.port}"}
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def _items(app: ViewServer, query: str) -> dict:
    status, headers, body = _get(app, "/api/items?" + query)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    return json.loads(body)


def test_paging_is_exact_and_in_browser_order(server, run) -> None:
    reader = ItemReader(run)
    order = [h["id"] for h, _, _ in reader.light_items()]
    reader.close()
    assert len(order) == 2 * N
    seen: list[str] = []
    for offset in range(0, 2 * N, 100):
        page = _items(server, f"offset={offset}&limit=100")
        assert (page["total"], page["offset"], page["limit"]) == (2 * N, offset, 100)
        assert len(page["items"]) == min(100, 2 * N - offset)
        seen += [it["id"] for it in page["items"]]
    assert seen == order and len(set(seen)) == 2 * N
    tail = _items(server, "offset=1000&limit=500")
    assert len(tail["items"]) == 50 and _items(server, "offset=5000&limit=10")["items"] == []


def test_filters_and_search(server) -> None:
    evens = len(range(0, N, 2))
    page = _items(server, "attack=typo&judge=rule&verdict=success&limit=500")
    assert page["total"] == evens
    assert all(it["attack"] == "typo" and int(it["sample_id"][1:]) % 2 == 0 for it in page["items"])
    assert all(len(it["images"]) == 1 for it in page["items"])
    refused = _items(server, "judge=other&verdict=refused&limit=1")["total"]
    assert refused == 2 * len(range(0, N, 3))
    assert _items(server, "category=c1&expected=comply&limit=1")["total"] == 2 * sum(
        n % 4 == 1 and n % 5 == 0 for n in range(N)
    )
    found = _items(server, "search=TOPIC%203&limit=500")
    assert found["total"] == 2 * sum(n % 7 == 3 for n in range(N))
    assert all("topic 3" in it["prompt"][0]["text"] for it in found["items"])
    facets = json.loads(_get(server, "/api/facets")[2])
    assert facets["n_items"] == 2 * N and set(facets["facets"]["attack"]) == {"none", "typo"}
    assert set(facets["facets"]["judge"]) == {"rule", "other"}
    for bad in ("limit=501", "limit=0", "offset=-1", "offset=x", "verdict=maybe"):
        status, _, body = _get(server, "/api/items?" + bad)
        assert status == 400 and "error" in json.loads(body)


def test_images_hosts_methods_and_headers(server, run) -> None:
    page = _items(server, "attack=typo&limit=1")
    sha = page["items"][0]["images"][0]
    status, headers, body = _get(server, f"/img/{sha}")
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    assert headers["X-Content-Type-Options"] == "nosniff"
    svg = Image.from_bytes(b"<svg onload=alert(1)>").sha256
    for path in (f"/img/{svg}", "/img/" + "0" * 64, "/img/zz", f"/img/{sha}x", "/img/../api/facets"):
        assert _get(server, path)[0] == 404, path
    assert _get(server, "/", host="evil.example:80")[0] == 403
    assert _get(server, "/api/facets", host=f"attacker.test:{server.port}")[0] == 403
    assert _get(server, "/", host=f"localhost:{server.port}")[0] == 200
    for method in ("POST", "PUT", "DELETE"):
        assert _get(server, "/api/facets", method=method)[0] in (405, 501)
    status, headers, body = _get(server, "/", method="HEAD")
    assert status == 200 and body == b""
    status, headers, body = _get(server, "/")
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "'sha256-" in policy and "connect-src 'self'" in policy
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
    assert b'id="mmsafe-browser-data"' not in body and b"s00001" not in body  # server mode embeds no item


def test_missing_run_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="no run folder"):
        ViewServer(tmp_path / "nope", port=0)


def test_page_filters_and_pages_through_the_api_in_chromium(server) -> None:
    count = "return document.getElementById('mb-count').textContent"
    with browser() as b:
        b.open(server.url)
        b.wait(lambda: b.js("return document.getElementById('browser').dataset.ready"), what="the browser")
        assert b.js(count) == f"{2 * N} items of {2 * N}"
        assert b.js("return document.getElementById('mb-page').textContent") == "page 1 of 21"
        b.js(
            "const s=document.getElementById('mb-f-attack'); s.value='typo'; s.dispatchEvent(new Event('change'))"
        )
        b.wait(lambda: b.js(count) == f"{N} items of {2 * N}", what="the attack filter")
        b.js(
            "const s=document.getElementById('mb-f-judge'); s.value='rule'; s.dispatchEvent(new Event('change'))"
        )
        b.js(
            "const s=document.getElementById('mb-f-verdict'); s.value='success'; s.dispatchEvent(new Event('change'))"
        )
        evens = len(range(0, N, 2))
        b.wait(lambda: b.js(count) == f"{evens} items of {2 * N}", what="the judge + verdict filter")
        b.js("document.getElementById('mb-next').click()")
        b.wait(lambda: b.js("return document.getElementById('mb-page').textContent") == "page 2 of 6")
        first = b.js("return document.querySelector('.mb-sample').textContent")
        assert first == "s00100"  # the 51st even sample
        b.wait(
            lambda: b.js("return document.querySelector('.mb-thumb').naturalWidth") > 0, what="a thumbnail"
        )
        assert b.js("return document.querySelector('.mb-thumb').getAttribute('src')").startswith("/img/")
        b.js("document.querySelector('.mb-thumb').click()")
        assert b.js("return document.getElementById('mb-lightbox-img').getAttribute('src')").startswith(
            "/img/"
        )
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []


def test_cli_view_serves_and_stops_cleanly_on_ctrl_c(run) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsafe", "view", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", line)
        assert m and f"{2 * N:,} items indexed" in line, line
        port = int(m.group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/facets")
        assert json.loads(conn.getresponse().read())["n_items"] == 2 * N
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "mmsafe view: stopped" in out and "Traceback" not in err
