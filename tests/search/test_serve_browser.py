"""The search page in a real headless browser (the system's Chromium driven by Playwright):
a typed query shows the API's hits with their images, captions, scores and ranks; a chosen
or dropped image shows its neighbours; a file that is no image shows the server's message.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` package
(the dev extra); Playwright's own browser download is not used. Skipped without either.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mmcontrast.search.serve import SearchServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGES_LOADED = """() => {
    const images = [...document.querySelectorAll('.hit img')];
    return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: install Chromium (apt-get install chromium) for this test")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Any, served: SearchServer) -> Iterator[Any]:
    """The page, freshly loaded; fails the test on an uncaught JavaScript error."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(served.url)
    page.wait_for_function("() => document.getElementById('k').placeholder !== ''")  # info read
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def api_hits(served: SearchServer, path: str, data: bytes | None = None) -> list[dict[str, Any]]:
    with urllib.request.urlopen(urllib.request.Request(served.url + path, data=data)) as answer:
        return json.loads(answer.read())["hits"]


def shown_hits(page: Any) -> list[dict[str, Any]]:
    """What the page shows of each hit: row, full score, rank, score and caption texts."""
    return page.eval_on_selector_all(
        ".hit",
        """cards => cards.map((card) => ({
            row: Number(card.dataset.row),
            score: Number(card.dataset.score),
            rank: card.querySelector('.rank').textContent,
            shown_score: card.querySelector('.score').textContent,
            caption: card.querySelector('.caption')?.textContent ?? null,
            image_path: card.querySelector('.path').textContent,
        }))""",
    )


def test_a_typed_query_shows_the_hits(page: Any, served: SearchServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(5)  # the server's k
    expect(page.locator("#status")).to_contain_text("5 images nearest to “a red circle”")
    expected = api_hits(served, f"/api/search?q={quote('a red circle')}&k=5")
    assert shown_hits(page) == [
        {
            "row": hit["row"],
            "score": hit["score"],
            "rank": f"#{hit['rank']}",
            "shown_score": f"{hit['score']:.3f}",
            "caption": hit["caption"],
            "image_path": hit["image_path"],
        }
        for hit in expected
    ]
    page.wait_for_function(IMAGES_LOADED)
    expect(page.locator("#error")).to_be_hidden()
    page.fill("#k", "2")  # the number of results is the page's to choose
    page.click("#search")
    expect(page.locator(".hit")).to_have_count(2)
    page.fill("#k", "")
    page.fill("#query", "a blue star")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(5)
    page.wait_for_function(IMAGES_LOADED)
    page.screenshot(path=str(tmp_path / "text-query.png"), full_page=True)
    assert (tmp_path / "text-query.png").stat().st_size > 0


def test_a_chosen_image_shows_its_neighbours(
    page: Any, served: SearchServer, shapes_dir: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    assert served.app is not None
    name = served.app.searcher.rows[6]["image_path"]
    path = shapes_dir / "train" / name
    page.set_input_files("#file", str(path))
    expect(page.locator("#status")).to_contain_text(f"nearest to {name}")
    expect(page.locator(".hit")).to_have_count(5)
    expect(page.locator("#preview")).to_be_visible()
    shown = shown_hits(page)
    expected = api_hits(served, "/api/search_image?k=5", path.read_bytes())
    assert [(hit["row"], hit["score"]) for hit in shown] == [
        (hit["row"], hit["score"]) for hit in expected
    ]
    assert shown[0]["score"] == pytest.approx(1.0, rel=1e-4)
    assert name in {hit["image_path"] for hit in shown if hit["score"] > 1 - 1e-4}  # twins tie
    page.wait_for_function(IMAGES_LOADED)
    page.screenshot(path=str(tmp_path / "image-query.png"), full_page=True)


def test_a_dropped_image_shows_its_neighbours(
    page: Any, served: SearchServer, shapes_dir: Path
) -> None:
    from playwright.sync_api import expect

    assert served.app is not None
    name = served.app.searcher.rows[9]["image_path"]
    data = list((shapes_dir / "train" / name).read_bytes())
    transfer = page.evaluate_handle(
        """([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
            return transfer;
        }""",
        [data, name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#status")).to_contain_text(f"nearest to {name}")
    shown = shown_hits(page)
    assert shown[0]["score"] == pytest.approx(1.0, rel=1e-4)
    assert name in {hit["image_path"] for hit in shown if hit["score"] > 1 - 1e-4}


def test_a_file_that_is_no_image_shows_the_message(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.fill("#query", "a green square")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(5)
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"these are notes, not pixels")
    page.set_input_files("#file", str(broken))
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text(
        "cannot search with this file (unreadable image)"
    )
    expect(page.locator(".hit")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    page.fill("#query", "   ")
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_have_text("Type something to search for.")


def test_markup_in_a_caption_shows_as_text(page: Any, served: SearchServer) -> None:
    """A caption (or path) holding HTML is shown as its characters, never parsed: a
    collection's captions come from anyone's data."""
    from playwright.sync_api import expect

    caption = '<b>x</b><img src=x onerror="window.__injected = 1">'
    path = "<script>window.__injected = 2</script>.png"
    hit = {"rank": 1, "score": 0.5, "row": 0, "image_path": path, "caption": caption}
    answer = {"query": "markup", "k": 1, "took_ms": 1.0, "hits": [{**hit, "image_url": "/image/0"}]}
    page.route(
        "**/api/search?*",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(answer)
        ),
    )
    page.fill("#query", "markup")
    page.press("#query", "Enter")
    expect(page.locator(".hit")).to_have_count(1)
    shown = shown_hits(page)[0]
    assert shown["caption"] == caption and shown["image_path"] == path
    assert page.locator(".hit .caption b, .hit .caption img, .hit .path script").count() == 0
    page.wait_for_timeout(200)  # an injected onerror would have run by now
    assert page.evaluate("() => window.__injected") is None
