"""Image attachments: sniffed types, size limits, data URLs and error messages."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from triagegate.errors import InputError
from triagegate.images import check_attachment, load_image_part, sniff_image_type
from triagegate.spec import Limits
from triagegate.types import Attachment

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x01" * 40
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x02" * 40
GIF = b"GIF89a" + b"\x03" * 40
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x04" * 40
LIMITS = Limits()


def data_url(media: str, data: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def write(tmp_path: Path, name: str, data: bytes) -> Attachment:
    path = tmp_path / name
    path.write_bytes(data)
    return Attachment.image(str(path))


@pytest.mark.parametrize(
    ("data", "media"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"), (b"hello", None)],
)
def test_sniff(data: bytes, media: str | None) -> None:
    assert sniff_image_type(data) == media


async def test_local_file_becomes_a_data_url(tmp_path: Path) -> None:
    part = await load_image_part(write(tmp_path, "shot.png", PNG), LIMITS)
    assert part.url == data_url("image/png", PNG)


async def test_type_comes_from_the_bytes_not_the_extension(tmp_path: Path) -> None:
    part = await load_image_part(write(tmp_path, "photo.png", JPEG), LIMITS)
    assert part.url.startswith("data:image/jpeg;base64,")


async def test_non_image_file_is_rejected_by_name(tmp_path: Path) -> None:
    attachment = write(tmp_path, "notes.png", b"just some text, honestly")
    with pytest.raises(InputError, match=r"notes\.png is not a PNG, JPEG, GIF or WebP image"):
        await load_image_part(attachment, LIMITS)
    with pytest.raises(InputError, match="not a PNG"):
        check_attachment(attachment, LIMITS)


async def test_too_large_file(tmp_path: Path) -> None:
    attachment = write(tmp_path, "big.png", PNG)
    limits = Limits(max_image_bytes=len(PNG) - 1)
    with pytest.raises(
        InputError, match=rf"big\.png is {len(PNG)} bytes, over the {len(PNG) - 1}-byte limit; resize"
    ) as caught:
        await load_image_part(attachment, limits)
    assert "IHDR" not in str(caught.value)
    with pytest.raises(InputError, match=f"over the {len(PNG) - 1}-byte limit"):
        check_attachment(attachment, limits)


async def test_disallowed_type(tmp_path: Path) -> None:
    attachment = write(tmp_path, "anim.gif", GIF)
    limits = Limits(image_types=["image/png", "image/jpeg"])
    with pytest.raises(InputError, match="image/gif, which this graph does not accept"):
        await load_image_part(attachment, limits)
    with pytest.raises(InputError, match="does not accept"):
        check_attachment(attachment, limits)


async def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = Attachment.image(str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match=r"nope\.png not found; check the path"):
        await load_image_part(missing, LIMITS)
    with pytest.raises(InputError, match="not found"):
        check_attachment(missing, LIMITS)
    empty = write(tmp_path, "empty.png", b"")
    with pytest.raises(InputError, match="is empty"):
        await load_image_part(empty, LIMITS)
    with pytest.raises(InputError, match="is empty"):
        check_attachment(empty, LIMITS)


async def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read image"):
        await load_image_part(Attachment.image(str(tmp_path)), LIMITS)


async def test_valid_data_url_passes_through(tmp_path: Path) -> None:
    url = data_url("image/webp", WEBP)
    assert (await load_image_part(Attachment.image(url), LIMITS)).url == url
    check_attachment(Attachment.image(url), LIMITS)


async def test_http_url_passes_through_unchecked() -> None:
    url = "https://cdn.example.com/screenshot.exe"
    assert (await load_image_part(Attachment.image(url), LIMITS)).url == url
    check_attachment(Attachment.image(url), LIMITS)


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        (data_url("image/png", JPEG), "declares image/png but contains image/jpeg"),
        (data_url("image/svg+xml", b"<svg/>"), "declares type image/svg"),
        ("data:image/png," + "x" * 20, "not base64-encoded"),
        ("data:image/png;base64,@@@not-base64@@@", "invalid base64"),
        (data_url("image/png", b"plain text"), "is not a PNG"),
        (data_url("image/png", PNG * 3), "over the 100-byte limit"),
    ],
)
async def test_bad_data_urls(url: str, pattern: str) -> None:
    limits = Limits(max_image_bytes=100)
    attachment = Attachment.image(url)
    with pytest.raises(InputError, match=pattern) as caught:
        await load_image_part(attachment, limits)
    message = str(caught.value)
    assert "data: URL" in message
    assert url.partition(",")[2] not in message
    with pytest.raises(InputError, match=pattern):
        check_attachment(attachment, limits)


async def test_data_url_aliases_and_whitespace_are_tolerated() -> None:
    encoded = base64.b64encode(JPEG).decode()
    url = f"data:image/JPG;base64,{encoded[:10]}\n{encoded[10:]}"
    assert (await load_image_part(Attachment.image(url), LIMITS)).url == url
