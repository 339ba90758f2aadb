"""Builds the image-prompt test corpus in assets/testdata/images/: one small file per kind of
image a user may attach (and a few that are not images), for bot/src/image_input.rs, the
simulator tests in bot/tests/inputs.rs and the fuzz targets in bot/tests/fuzz.rs.

Run by hand only, never in CI, from the repository root:

    python3 -m venv /tmp/pyenv && /tmp/pyenv/bin/pip install pillow
    /tmp/pyenv/bin/python tools/make_image_corpus.py

The output is committed. Each picture has a feature the tests look for after decoding (a red
corner, a colour, a transparent half), noted next to it below.
"""

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path("assets/testdata/images")


def two_tone(w, h):
    """Blue, with a red square in the stored top-left corner."""
    img = Image.new("RGB", (w, h), (20, 40, 220))
    ImageDraw.Draw(img).rectangle([0, 0, 7, 7], fill=(230, 20, 20))
    return img


def exif_rotated_jpeg():
    # Stored 48 wide x 32 high; EXIF orientation 6 says "rotate 90 degrees clockwise to view",
    # as phones write it: seen upright it is 32 x 48 with the red square top-right.
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    two_tone(48, 32).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def cmyk_jpeg():
    # Pure red in CMYK (C=0, M=100%, Y=100%, K=0); Pillow writes Adobe-style inverted CMYK,
    # as Photoshop does.
    buf = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(img):
    return encode(img, "PNG")


def grey16_png():
    # A left-to-right ramp over the whole 16-bit range.
    img = Image.new("I;16", (32, 16))
    img.putdata([x * 65535 // 31 for _ in range(16) for x in range(32)])
    return png(img)


def rgba_png():
    # Left half fully transparent (its colour, black, must not show), right half opaque green.
    img = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([16, 0, 31, 15], fill=(0, 200, 0, 255))
    return png(img)


def frames():
    return [Image.new("RGB", (24, 24), c) for c in [(220, 20, 20), (20, 200, 20), (20, 20, 220)]]


def animated(fmt, **kw):
    # Three frames, red then green then blue: only the first (red) is the image prompt.
    first, *rest = frames()
    buf = io.BytesIO()
    first.save(buf, fmt, save_all=True, append_images=rest, duration=100, loop=0, **kw)
    return buf.getvalue()


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png():
    # A valid PNG header that claims 50,000 x 50,000 RGB pixels (7.5 GB decoded), followed by
    # one compressed row: a decoder that trusts the header allocates before it fails.
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 50_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    photo = exif_rotated_jpeg()
    files = {
        "photo_exif_orientation_6.jpg": photo,
        "cmyk_red.jpg": cmyk_jpeg(),
        "grey16_ramp.png": grey16_png(),
        "grey.png": png(Image.new("L", (16, 16), 128)),
        "rgba_half_transparent.png": rgba_png(),
        "animated.gif": animated("GIF"),
        "animated.webp": animated("WEBP", lossless=True),
        "animated.png": animated("PNG"),
        "still.webp": encode(two_tone(32, 32), "WEBP", quality=90),
        "tiny.bmp": encode(two_tone(8, 8), "BMP"),
        "bomb_50000x50000.png": bomb_png(),
        "truncated.jpg": photo[: len(photo) // 2],
        "random_bytes.png": random.Random(1).randbytes(2048),
        "notes.txt": b"These are my notes, not an image.\n",
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
