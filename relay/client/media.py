"""Client-side media: compress images with Pillow, then encrypt with a fresh AES-256-GCM key.

The relay stores only the ciphertext; the key travels inside an E2E message (Inner.MEDIA), so the
relay can count a blob's size bucket and fetches but never see it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_SIDE = 1600
JPEG_QUALITY = 75


@dataclass(frozen=True)
class MediaRef:
    """What a recipient needs to fetch and open a blob."""

    blob_id: str
    key: bytes  # 32 bytes
    nonce: bytes  # 12 bytes
    caption: str = ""

    def encode(self) -> bytes:
        return self.blob_id.encode("ascii") + self.key + self.nonce + self.caption.encode()

    @classmethod
    def decode(cls, body: bytes) -> MediaRef:
        if len(body) < 32 + 32 + 12:
            raise ValueError("media reference too short")
        return cls(body[:32].decode("ascii"), body[32:64], body[64:76], body[76:].decode())


def compress_image(data: bytes) -> bytes:
    """Re-encode an image as JPEG (longest side ≤ MAX_SIDE). Data that is not an image is returned as is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except (UnidentifiedImageError, OSError):
        return data
    smaller = out.getvalue()
    return smaller if len(smaller) < len(data) else data


def encrypt_blob(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, key, nonce)."""
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    return AESGCM(key).encrypt(nonce, data, None), key, nonce


def decrypt_blob(ciphertext: bytes, key: bytes, nonce: bytes) -> bytes:
    return AESGCM(key).decrypt(nonce, ciphertext, None)
