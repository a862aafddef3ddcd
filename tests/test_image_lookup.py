"""``load_first_image``: the first candidate image that is there; an unusable one fails at once."""

from __future__ import annotations

import pytest

from mmsafe.datasets._util import ImageLoadError, ImageNotFound, load_first_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_takes_the_first_candidate_that_is_there(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpeg bytes")
    (tmp_path / "a.png.d").mkdir()  # a folder is not an image
    (tmp_path / "b.png").write_bytes(PNG)
    img = load_first_image(tmp_path, ["a.png", "a.png.d", "a.jpg", "b.png"], source=lambda rel: f"imgs/{rel}")
    assert img.data == b"jpeg bytes" and img.source == "imgs/a.jpg"


def test_none_there_names_what_was_looked_for(tmp_path):
    with pytest.raises(ImageNotFound, match=r"image not found: imgs/x\{\.png,\.jpg\}"):
        load_first_image(tmp_path, ["x.png", "x.jpg"], missing="imgs/x{.png,.jpg}")
    with pytest.raises(ImageNotFound, match=r"image not found: .*x\.png"):
        load_first_image(tmp_path, ["x.png", "x.jpg"])


def test_an_unusable_candidate_fails_without_trying_the_rest(tmp_path):
    (tmp_path / "ok.png").write_bytes(PNG)
    with pytest.raises(ImageLoadError, match="escapes") as info:
        load_first_image(tmp_path, ["../outside.png", "ok.png"])
    assert not isinstance(info.value, ImageNotFound)
