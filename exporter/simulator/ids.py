"""Job ids: random-looking version-4 UUIDs that encode their team and creation time.

Decoding an id tells the world where the Job sits in its team's sorted columns, so a million Jobs
need no id -> Job index (which would cost more memory than all the Jobs' other data together).
"""

from __future__ import annotations

import hashlib

_HALF = 61  # a version-4 UUID has 122 free bits: a random half and a half that says where the Job is
_MASK = (1 << _HALF) - 1
_TEAM_BITS = 10
MAX_TEAMS = 1 << _TEAM_BITS
_EPOCH_2000_US = 946_684_800_000_000
_CREATED_SPAN = 1 << (_HALF - _TEAM_BITS)  # microseconds after 2000: until 2071
_MULTIPLIER = 0x9E3779B97F4A7C15  # odd, so the scrambling is spread over all bits
_LOW62 = (1 << 62) - 1


class IdCodec:
    """Encodes (team index, created µs) into a UUID integer, keyed by the seed.

    The random half (61 bits from the caller's RNG) makes ids unique and scrambles the other half,
    which is (team, created) xor a hash of the random half, so decoding needs no lookup.
    """

    def __init__(self, seed: int) -> None:
        digest = hashlib.blake2b(f"duvo-sim-ids:{seed}".encode(), digest_size=8).digest()
        self._key = int.from_bytes(digest, "big") & _MASK

    def _pad(self, noise: int) -> int:
        mixed = ((noise ^ self._key) * _MULTIPLIER) & _MASK
        return mixed ^ (mixed >> 29)

    def encode(self, team: int, created_us: int, noise: int) -> int:
        """`noise`: 61 random bits."""
        hi, lo = self.encode_halves(team, created_us, noise)
        return hi << 64 | lo

    def encode_halves(self, team: int, created_us: int, noise: int) -> tuple[int, int]:
        """The id's high and low 64 bits, computed without 128-bit arithmetic (the hot path)."""
        offset = created_us - _EPOCH_2000_US
        if not 0 <= team < MAX_TEAMS or not 0 <= offset < _CREATED_SPAN:
            raise ValueError("team index or creation time (2000..2071) outside the id space")
        noise &= _MASK
        located = (team | offset << _TEAM_BITS) ^ self._pad(noise)
        # The 122 bits are noise (61) then `located` (61), laid out around the version and variant bits.
        hi = (noise >> 13) << 16 | 0x4000 | ((noise >> 1) & 0xFFF)
        lo = 0x8000000000000000 | (noise & 1) << 61 | located
        return hi, lo

    def decode(self, u: int) -> tuple[int, int] | None:
        """(team index, created µs) an id would carry; the caller checks the Job really exists."""
        if (u >> 76) & 0xF != 4 or (u >> 62) & 0x3 != 2:
            return None
        x = (u >> 80) << 74 | ((u >> 64) & 0xFFF) << 62 | (u & _LOW62)
        payload = (x & _MASK) ^ self._pad(x >> _HALF)
        return payload & (MAX_TEAMS - 1), (payload >> _TEAM_BITS) + _EPOCH_2000_US


def format_uuid(u: int) -> str:
    h = f"{u:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_uuid(text: str) -> int | None:
    """The integer of a canonical UUID string; None for anything else (ids are compared as text)."""
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        return None
    digits = text.replace("-", "")
    if len(digits) != 32 or digits != digits.lower():
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def random_uuid(bits: int) -> int:
    """A version-4 UUID integer from 128 random bits."""
    return (bits & ~(0xF << 76) & ~(0x3 << 62)) | 4 << 76 | 2 << 62
