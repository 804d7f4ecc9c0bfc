"""IDX reading and writing: round trips for every type, and every error names the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlcli.data.idx import TYPE_CODES, decode_idx, looks_like_idx, read_idx, write_idx
from dlcli.errors import DataError

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_type(tmp_path: Path, dtype: str, suffix: str) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix.endswith(".gz") else b"\0\0")


def test_file_layout_is_big_endian_lecun_format(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.idx", np.array([[1, 2, 3]], dtype=np.int32))
    assert (tmp_path / "a.idx").read_bytes() == idx_bytes(0x0C, (1, 3), struct.pack(">3i", 1, 2, 3))


def test_type_code_table_matches_the_format() -> None:
    assert {code: dt.str for code, dt in TYPE_CODES.items()} == {
        0x08: "|u1",
        0x09: "|i1",
        0x0B: ">i2",
        0x0C: ">i4",
        0x0D: ">f4",
        0x0E: ">f8",
    }


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    disguised = tmp_path / "a.idx"  # gzip data under a raw name
    disguised.write_bytes((tmp_path / "a.gz").read_bytes())
    plain = tmp_path / "b.gz"  # raw data under a .gz name
    plain.write_bytes(idx_bytes(0x08, (3, 4), array.tobytes()))
    np.testing.assert_array_equal(read_idx(disguised), array)
    np.testing.assert_array_equal(read_idx(plain), array)


def test_uint8_arrays_are_writable_views(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros((4, 2, 2), dtype=np.uint8))
    array = read_idx(tmp_path / "a.gz")
    assert array.flags.writeable
    assert array.base is not None  # a view of the decompressed buffer, not a copy
    array[0, 0, 0] = 7


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    data = idx_bytes(0x08, (6,), bytes(range(6)))
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(data[:5]) + gzip.compress(data[5:]))
    assert read_idx(path).tolist() == [0, 1, 2, 3, 4, 5]


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "a.idx.gz"
    write_idx(path, np.ones(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="IDX cannot hold dtype int64"):
        write_idx(path, np.ones(3, dtype=np.int64))
    assert read_idx(path).tolist() == [1, 1, 1]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx.gz"]


def test_write_refuses_scalars(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"1 to 255 dimensions, got an array of shape \(\)"):
        write_idx(tmp_path / "a.idx", np.array(3, dtype=np.uint8))


# --- errors: each names the file and says what was expected -----------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found: .*nope\.gz$"):
        read_idx(tmp_path / "nope.gz")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory, expected an IDX file"):
        read_idx(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.idx").write_bytes(b"")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "e.idx")
    assert str(err.value) == f"{tmp_path / 'e.idx'} is empty (0 bytes), expected an IDX file"


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 3)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value).startswith(
        f"{path} starts like a gzip file (1f 8b) but is not valid gzip data: "
    )


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value).startswith(
        f"{path} is a truncated gzip file: its {len(data) // 2} bytes end before the end"
    )


def test_garbage_after_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "g.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (1,), b"\x01")) + b"junk")
    with pytest.raises(DataError, match=r"g\.gz: 4 unexpected bytes after the end of the gzip"):
        read_idx(path)


def test_not_an_idx_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path} is not an IDX file: expected it to start with 00 00, found 89 50 4e 47"
    )


def test_not_an_idx_file_inside_gzip(tmp_path: Path) -> None:
    path = tmp_path / "text.gz"
    path.write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(DataError, match=r"text\.gz is not an IDX file: .* found 68 65 6c 6c"):
        read_idx(path)


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "u.idx"
    path.write_bytes(idx_bytes(0x0A, (2,), b"\0\0"))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: unknown IDX type code 0x0A; expected one of 0x08 (uint8), 0x09 (int8), "
        "0x0B (int16), 0x0C (int32), 0x0D (float32), 0x0E (float64)"
    )


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h.idx"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: IDX header is truncated: 3 dimensions need a 16-byte header, found 8 bytes"
    )


def test_zero_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "z.idx"
    path.write_bytes(bytes([0, 0, 8, 0, 1]))
    with pytest.raises(DataError, match=r"z\.idx: IDX header has 0 dimensions, expected at least"):
        read_idx(path)


@pytest.mark.parametrize(
    ("payload", "relation", "found"), [(bytes(11), "shorter", 11), (bytes(13), "longer", 13)]
)
def test_payload_size_differs_from_header(
    tmp_path: Path, payload: bytes, relation: str, found: int
) -> None:
    path = tmp_path / "p.idx"
    path.write_bytes(idx_bytes(0x08, (3, 4), payload))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: IDX payload is {relation} than its header says: shape 3×4 of uint8 needs "
        f"12 bytes, found {found}"
    )


def test_payload_size_counts_item_size(tmp_path: Path) -> None:
    path = tmp_path / "p.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x0E, (2,), bytes(8))))
    with pytest.raises(DataError, match="shape 2 of float64 needs 16 bytes, found 8"):
        read_idx(path)


def test_huge_header_is_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "big.idx"
    path.write_bytes(idx_bytes(0x0E, (0xFFFFFFFF,) * 4, bytes(3)))
    with pytest.raises(DataError, match="payload is shorter than its header says"):
        read_idx(path)


# --- property: any bytes give an array or a DataError -----------------------------------------


def near_idx() -> st.SearchStrategy[bytes]:
    """Bytes that look like IDX: a plausible header and a payload of about the right length."""
    return st.builds(
        lambda code, shape, extra: idx_bytes(code, tuple(shape), bytes(extra)),
        st.sampled_from([*TYPE_CODES, 0x00, 0x0A, 0xFF]),
        st.lists(st.integers(0, 6), min_size=0, max_size=3),
        st.integers(0, 300),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(st.binary(max_size=200), near_idx()),
    compress=st.booleans(),
    cut=st.integers(0, 40),
)
def test_any_bytes_give_an_array_or_a_data_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, compress: bool, cut: int
) -> None:
    if compress:
        data = gzip.compress(data)
        data = data[: len(data) - cut]  # sometimes truncated
    path = tmp_path_factory.mktemp("fuzz") / "f.idx"
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert isinstance(array, np.ndarray) and array.dtype.isnative


@given(st.binary(max_size=100))
def test_decode_idx_never_raises_anything_else(data: bytes) -> None:
    try:
        decode_idx(data, source="blob")
    except DataError as err:
        assert "blob" in str(err)


@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
def test_what_write_idx_writes_looks_like_idx_and_other_files_do_not(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"a{suffix}"
    write_idx(path, np.zeros((2, 3, 3), np.uint8))
    assert looks_like_idx(path.read_bytes()[:4])
    for other in (b"\x89PNG", b"\x93NUMPY", b"PK\x03\x04", b"path,label", b"\0", b""):
        assert not looks_like_idx(other), other
