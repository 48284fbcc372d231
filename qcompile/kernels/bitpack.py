"""Weights below 8 bits in the library: an int8 kernel constant with at most 2^b distinct values is stored
as a table of those values (int8) and a stream of b-bit indices, and one kernel per call unpacks it to the
int8 tensor the dot-product kernels read. Unpacking is a table lookup, so the int8 kernels see exactly the
integers realize made, on every target.

The stream is little-endian in bits: index i occupies bits [i*b, (i+1)*b) of the byte string, so for any
b in 1..7 it spans at most two bytes (one padding byte follows the last)."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

MAX_PACKED_BITS = 7  # 8 bits is the int8 tensor itself


def index_bits(distinct: int) -> int:
    """Bits an index into `distinct` values takes (at least 1)."""
    return max(1, int(distinct - 1).bit_length())


def pack(values: np.ndarray, max_bits: int = MAX_PACKED_BITS) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(stream uint8, table int8, bits) of an int8 array, or None when it needs more than `max_bits`."""
    table, codes = np.unique(values.reshape(-1), return_inverse=True)
    bits = index_bits(len(table))
    if bits > max_bits:
        return None
    n = codes.size
    # bit j of index i goes to stream bit i*bits + j
    bit_values = (codes[:, None] >> np.arange(bits)[None, :]) & 1
    stream_bits = np.zeros(n * bits + 16, dtype=np.uint8)
    stream_bits[: n * bits] = bit_values.reshape(-1)
    stream = np.packbits(stream_bits[: -(-(n * bits) // 8) * 8 + 8], bitorder="little")
    return stream, table.astype(np.int8), bits


def unpack_reference(stream: np.ndarray, table: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """What the unpack kernel computes, in numpy (for tests)."""
    n = int(np.prod(shape))
    stream_bits = np.unpackbits(stream, bitorder="little")
    idx = (stream_bits[: n * bits].reshape(n, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    return table[idx].reshape(shape)


def unpack(stream: te.Tensor, table: te.Tensor, shape: tuple[int, ...], bits: int) -> te.Tensor:
    """The int8 tensor of `shape` from a packed stream and its table (TE)."""
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * int(shape[i + 1])
    mask = (1 << bits) - 1

    def value(*idx):
        flat = idx[0] * strides[0]
        for i, s in zip(idx[1:], strides[1:], strict=True):
            flat = flat + i * s
        bit = flat * bits
        byte = bit >> 3
        word = stream[byte].astype("int32") | (stream[byte + 1].astype("int32") << 8)
        code = (word >> (bit & 7).astype("int32")) & tirx.const(mask, "int32")
        return table[code]

    return te.compute(tuple(int(d) for d in shape), value, name="unpack_weights")
