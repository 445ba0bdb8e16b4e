"""MNIST / Fashion-MNIST loading (bslrun.data.mnist): IDX format, checksums, cache, splits.

No test touches the network: ``urlopen`` is replaced in every test, and the
download tests serve the shared copy of MNIST (../shared/data/mnist, or
$BSLRUN_SHARED_DIR/data/mnist). References are the published facts about
MNIST quoted in the shared data README (MD5s, label counts, pixel means) and
IDX files written here byte by byte with ``struct``.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import struct
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import jax
import numpy as np
import pytest
from conftest import denied, fail_under

from bslrun import artifacts
from bslrun.config import Binarize, ImageDataConfig
from bslrun.data import load, mnist
from bslrun.data.mnist import FASHION_MNIST, MNIST, STEMS, fetch, read_idx
from bslrun.errors import DataError, ResourceError
from bslrun.registry import datasets
from bslrun.seeding import streams

SHARED = Path(os.environ.get("BSLRUN_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f"{s}.gz").is_file() for s in STEMS),
    reason="shared MNIST copy not present",
)

# Published facts (shared/data/README.md): MD5 of the uncompressed originals,
# label counts, mean pixel / 255.
README_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TRAIN_MEAN, TEST_MEAN = 0.130660, 0.132515


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array, written out field by field."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def image_cfg(**kw) -> ImageDataConfig:
    base = dict(name="mnist", root=str(MNIST_DIR), download=False)
    base.update(kw)
    return ImageDataConfig(**base)


class FakeUrlopen:
    """Stands in for urllib's urlopen: ``serve(url)`` returns bytes or raises."""

    def __init__(self, serve):
        self.serve, self.calls = serve, []

    def __call__(self, url, timeout=None):
        import io

        self.calls.append((url, timeout))
        return io.BytesIO(self.serve(url))


def offline(url):
    raise URLError("network unreachable (test)")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, and no data root leaking in from the environment."""
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(offline))
    monkeypatch.delenv("BSLRUN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("shape", [(3, 28, 28), (7,), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, compressed, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    blob = idx_bytes(array)
    # The file name says nothing: gzip is told by its magic bytes.
    path = tmp_path / ("data.gz" if not compressed else "data.idx")
    path.write_bytes(gz(blob) if compressed else blob)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


@needs_mnist
def test_read_idx_on_the_shared_labels():
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,)
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS


GOOD = idx_bytes(np.arange(20, dtype=np.uint8).reshape(4, 5))  # 12-byte header + 20


def gz(blob: bytes) -> bytes:
    """gzip with a fixed header time: parametrised test ids must not depend on the clock
    (pytest-xdist refuses to run when its workers collect different ids)."""
    return gzip.compress(blob, mtime=0)


MALFORMED = {
    "idx3-magic": (b"\x08\x03" + GOOD[2:], "bad magic"),
    "zip-magic": (b"PK\x03\x04" + GOOD[4:], "bad magic"),
    "empty": (b"", "bad magic"),
    "float32": (idx_bytes(np.zeros((2, 2), np.uint8), type_code=0x0D), r"type 0x0d \(float32\)"),
    "truncated-body": (GOOD[:-1], r"truncated: dims 4x5 need 32 bytes, found 31"),
    "truncated-header": (GOOD[:8], "truncated or empty IDX header"),
    "trailing-byte": (GOOD + b"\x00", r"trailing bytes: dims 4x5 need 32 bytes, found 33"),
    "gzip-cut-in-trailer": (gz(GOOD)[:-6], "damaged gzip"),
    "gzip-cut-in-deflate": (gz(GOOD)[:15], "damaged gzip"),
    "gzip-bad-crc": (gz(GOOD)[:-8] + b"\x00\x00\x00\x00" + gz(GOOD)[-4:], "damaged gzip"),
    "gzip-of-truncated": (gz(GOOD[:-1]), "truncated"),  # intact gzip of a truncated IDX file
}


@pytest.mark.parametrize("blob, pattern", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_idx_raises_one_line_naming_the_file(tmp_path, blob, pattern):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=pattern) as excinfo:
        read_idx(path)
    message = one_line_error(excinfo)
    assert str(path) in message
    assert "replace it with the original" in message
    assert excinfo.value.__cause__ is None  # no numpy / gzip exception chained along


def test_a_folder_for_a_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_idx(tmp_path)


# ----------------------------------------------------------------------------- checksums


def is_sha256(text) -> bool:
    return isinstance(text, str) and len(text) == 64 and int(text, 16) >= 0


def test_checksum_tables_pin_the_content_and_fashion_also_the_served_gzip():
    for source in (MNIST, FASHION_MNIST):
        assert set(source.checksums) == set(STEMS)
        assert all(is_sha256(check.idx) for check in source.checksums.values())
    assert all(check.gz is None for check in MNIST.checksums.values())
    assert all(is_sha256(check.gz) for check in FASHION_MNIST.checksums.values())
    sums = [c.idx for c in FASHION_MNIST.checksums.values()]
    sums += [c.gz for c in FASHION_MNIST.checksums.values()]
    assert len(set(sums)) == 8  # no value pasted twice


@needs_mnist
def test_mnist_checksums_match_the_published_md5s_of_the_originals():
    for stem in STEMS:
        raw = gzip.decompress((MNIST_DIR / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == README_MD5[stem]
        assert hashlib.sha256(raw).hexdigest() == MNIST.checksums[stem].idx


def link_shared(folder: Path, skip=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        if stem not in skip:
            (folder / f"{stem}.gz").symlink_to(MNIST_DIR / f"{stem}.gz")


@needs_mnist
@pytest.mark.parametrize("download", [False, True])
def test_placed_file_with_wrong_content_is_refused_and_kept(tmp_path, download):
    link_shared(tmp_path / "mnist", skip=["train-images-idx3-ubyte"])
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte"  # a well-formed IDX, wrong images
    bad.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="is not MNIST's .*: its SHA-256") as excinfo:
        fetch(MNIST, image_cfg(root=str(tmp_path), download=download))
    message = one_line_error(excinfo)
    assert str(bad) in message and MNIST.checksums["train-images-idx3-ubyte"].idx in message
    # Deleting is advised only where a download would put the file back.
    assert ("delete it to download it again" in message) == download
    assert bad.is_file()  # never delete a user's file
    assert mnist.urlopen.calls == []


@needs_mnist
def test_placed_truncated_gzip_is_refused(tmp_path):
    link_shared(tmp_path, skip=["train-images-idx3-ubyte"])
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes((MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes()[:100000])
    with pytest.raises(DataError, match="damaged gzip") as excinfo:
        fetch(MNIST, image_cfg(root=str(tmp_path), download=True))
    message = one_line_error(excinfo)
    assert str(bad) in message and bad.is_file()
    # The file sits in the root itself, not in <root>/mnist where downloads go.
    assert "replace it with the original" in message and "delete" not in message


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def synthetic_idx() -> dict:
    """Small stand-ins for the four files (stem -> IDX bytes); images with structure, so
    that compression levels really compress differently."""
    rng = np.random.default_rng(7)

    def images(n):
        return (rng.integers(0, 4, (n, 28, 28)) * 85).astype(np.uint8)

    labels = rng.integers(0, 10, 8).astype(np.uint8)
    return {
        "train-images-idx3-ubyte": idx_bytes(images(5)),
        "train-labels-idx1-ubyte": idx_bytes(labels[:5]),
        "t10k-images-idx3-ubyte": idx_bytes(images(3)),
        "t10k-labels-idx1-ubyte": idx_bytes(labels[5:]),
    }


@pytest.fixture
def fake_fashion(monkeypatch):
    """Fashion-MNIST's pinned sums replaced by those of synthetic files (stem -> IDX
    bytes): the content sum of each, and the .gz sum of gz(bytes) as the mirror's copy."""
    raws = synthetic_idx()
    for stem, raw in raws.items():
        monkeypatch.setitem(
            FASHION_MNIST.checksums, stem, mnist.Checksum(sha256(raw), sha256(gz(raw)))
        )
    return raws


def gzip_named(blob: bytes) -> bytes:
    """gzip with the FNAME header field set, as the gzip program writes a file."""
    buffer = io.BytesIO()
    with gzip.GzipFile("train-images-idx3-ubyte", "wb", fileobj=buffer, mtime=0) as handle:
        handle.write(blob)
    return buffer.getvalue()


# form -> (encode the IDX bytes, file suffix); all but the first two differ from the .gz
# the mirror serves, so a check of the .gz bytes would refuse them.
ENCODINGS = {
    "uncompressed": (lambda raw: raw, ""),
    "gzip as served": (gz, ".gz"),
    "gzip other mtime": (lambda raw: gzip.compress(raw, mtime=1_500_000_000), ".gz"),
    "gzip with file name": (gzip_named, ".gz"),
    "gzip level 1": (lambda raw: gzip.compress(raw, compresslevel=1, mtime=0), ".gz"),
    "gzip under the raw name": (lambda raw: gzip.compress(raw, mtime=7), ""),
}


def altered(raw: bytes) -> bytes:
    """The same IDX header and size, one element changed."""
    return raw[:-1] + bytes([raw[-1] ^ 1])


def place_fashion(folder: Path, raws: dict, form: str) -> dict:
    encode, suffix = ENCODINGS[form]
    folder.mkdir(parents=True, exist_ok=True)
    placed = {stem: folder / f"{stem}{suffix}" for stem in raws}
    for stem, raw in raws.items():
        placed[stem].write_bytes(encode(raw))
    return placed


@pytest.mark.parametrize("form", list(ENCODINGS), ids=list(ENCODINGS))
def test_fashion_copies_are_accepted_by_their_content(tmp_path, fake_fashion, form):
    placed = place_fashion(tmp_path / "fashion_mnist", fake_fashion, form)
    for stem, path in placed.items():
        if form not in ("uncompressed", "gzip as served"):
            assert sha256(path.read_bytes()) != FASHION_MNIST.checksums[stem].gz
    arrays = fetch(FASHION_MNIST, image_cfg(name="fashion_mnist", root=str(tmp_path)))
    for stem, raw in fake_fashion.items():
        np.testing.assert_array_equal(arrays[stem], mnist.parse_idx(raw, stem, "fix"))
    assert mnist.urlopen.calls == []


@pytest.mark.parametrize("form", list(ENCODINGS), ids=list(ENCODINGS))
def test_fashion_copies_with_other_content_are_refused(tmp_path, fake_fashion, form):
    stem = "train-images-idx3-ubyte"  # read first
    raws = dict(fake_fashion, **{stem: altered(fake_fashion[stem])})
    placed = place_fashion(tmp_path / "fashion_mnist", raws, form)
    cfg = image_cfg(name="fashion_mnist", root=str(tmp_path))
    with pytest.raises(DataError, match=r"\(decompressed content\)") as excinfo:
        fetch(FASHION_MNIST, cfg)
    message = one_line_error(excinfo)
    assert str(placed[stem]) in message and "is not Fashion-MNIST's train-images" in message
    assert FASHION_MNIST.checksums[stem].idx in message and sha256(raws[stem]) in message
    assert "replace it with the original" in message and excinfo.value.__cause__ is None
    assert placed[stem].is_file()  # never delete a user's file


SERVED = {
    "as published": "",
    "re-compressed": r"\(gzip file as served\)",
    "pinned gzip, other content": r"\(decompressed content\)",
}


@pytest.mark.parametrize("case", list(SERVED), ids=list(SERVED))
def test_fashion_download_checks_the_gzip_as_served_and_its_content(
    monkeypatch, tmp_path, fake_fashion, case
):
    stem = "t10k-labels-idx1-ubyte"
    folder = tmp_path / "fashion_mnist"
    place_fashion(folder, {s: r for s, r in fake_fashion.items() if s != stem}, "uncompressed")
    raw = fake_fashion[stem]
    served = {"as published": gz(raw), "re-compressed": gzip.compress(raw, mtime=1)}.get(case)
    if served is None:  # a mirror serving what the pinned .gz sum names, but other content
        served = gz(altered(raw))
        monkeypatch.setitem(
            FASHION_MNIST.checksums, stem, mnist.Checksum(sha256(raw), sha256(served))
        )
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(lambda url: served))
    cfg = image_cfg(name="fashion_mnist", root=str(tmp_path), download=True)
    if not SERVED[case]:
        arrays = fetch(FASHION_MNIST, cfg)
        assert (folder / f"{stem}.gz").read_bytes() == served  # kept as served
        np.testing.assert_array_equal(arrays[stem], mnist.parse_idx(raw, stem, "fix"))
        return
    with pytest.raises(DataError, match=SERVED[case]) as excinfo:
        fetch(FASHION_MNIST, cfg)
    assert FASHION_MNIST.mirrors[0] in one_line_error(excinfo)
    assert not (folder / f"{stem}.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_missing_checksum_fails_closed(monkeypatch, tmp_path):
    stem = "t10k-labels-idx1-ubyte"
    monkeypatch.setitem(MNIST.checksums, stem, mnist.Checksum(None))
    with pytest.raises(DataError, match=f"no published SHA-256 of MNIST {stem}"):
        mnist.verify(MNIST, stem, idx_bytes(np.zeros(3, np.uint8)), tmp_path / stem, "fix")


# ----------------------------------------------------------------------------- location


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.data_root(image_cfg(root=None)) == tmp_path / "xdg" / "bslrun"
    monkeypatch.setenv("BSLRUN_DATA_DIR", str(tmp_path / "env"))
    assert mnist.data_root(image_cfg(root=None)) == tmp_path / "env"
    assert mnist.data_root(image_cfg(root=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("BSLRUN_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.data_root(image_cfg(root=None)) == tmp_path / "home" / ".cache" / "bslrun"


def test_files_are_found_in_the_named_folder_or_the_root(tmp_path):
    stem = "t10k-labels-idx1-ubyte"
    assert mnist.find_file(MNIST, stem, tmp_path) is None
    (tmp_path / f"{stem}.gz").write_bytes(b"")
    assert mnist.find_file(MNIST, stem, tmp_path) == tmp_path / f"{stem}.gz"
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / stem).write_bytes(b"")
    assert mnist.find_file(MNIST, stem, tmp_path) == tmp_path / "mnist" / stem
    # Both forms are checked by their content; the uncompressed one needs no gunzip.
    (tmp_path / "mnist" / f"{stem}.gz").write_bytes(b"")
    assert mnist.find_file(MNIST, stem, tmp_path) == tmp_path / "mnist" / stem
    (tmp_path / "fashion_mnist").mkdir()
    (tmp_path / "fashion_mnist" / f"{stem}.gz").write_bytes(b"")
    assert mnist.find_file(FASHION_MNIST, stem, tmp_path).name == f"{stem}.gz"
    (tmp_path / "fashion_mnist" / stem).write_bytes(b"")
    assert mnist.find_file(FASHION_MNIST, stem, tmp_path).name == stem
    # A folder named like the file (as some archives unpack) is not the file.
    (tmp_path / "fashion_mnist" / stem).unlink()
    (tmp_path / "fashion_mnist" / f"{stem}.gz").unlink()
    (tmp_path / "fashion_mnist" / stem).mkdir()
    assert mnist.find_file(FASHION_MNIST, stem, tmp_path) == tmp_path / f"{stem}.gz"


def test_missing_files_without_download_list_files_and_folder(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load(image_cfg(root=str(tmp_path)), streams(0).data)
    message = one_line_error(excinfo)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "data.root" in message and "BSLRUN_DATA_DIR" in message
    assert "data.download=false" in message and "data.download=true" in message
    assert mnist.urlopen.calls == []


# ----------------------------------------------------------------------------- root faults


def _file_as_root(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a folder")
    return str(tmp_path / "notes.txt")


def _file_as_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BSLRUN_DATA_DIR", _file_as_root(tmp_path, monkeypatch))
    return None


def _root_loop(tmp_path, monkeypatch):
    (tmp_path / "data").symlink_to(tmp_path / "data")
    return str(tmp_path / "data")


def _named_folder_loop(tmp_path, monkeypatch):
    (tmp_path / "mnist").symlink_to(tmp_path / "mnist")
    return str(tmp_path)


def _unsearchable_root(tmp_path, monkeypatch):
    fail_under(monkeypatch, "stat", tmp_path, denied(tmp_path))
    return str(tmp_path)


def _unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    for stem in STEMS:
        (tmp_path / "mnist" / stem).write_bytes(GOOD)
    fail_under(monkeypatch, "open", tmp_path / "mnist", denied(tmp_path / "mnist"))
    return str(tmp_path)


def _folders_named_like_files(tmp_path, monkeypatch):
    for stem in STEMS:
        (tmp_path / "mnist" / stem).mkdir(parents=True)
    return str(tmp_path)


# case -> (setup(tmp_path, monkeypatch) -> data.root, error type, words in the message)
ROOT_FAULTS = {
    "file as data.root": (_file_as_root, DataError, ["data.root=", "is a file, not a folder"]),
    "file as env root": (_file_as_env_root, DataError, ["$BSLRUN_DATA_DIR=", "is a file"]),
    "symlink loop": (_root_loop, DataError, ["data.root=", "symlink loop"]),
    "named folder a loop": (_named_folder_loop, DataError, ["mnist", "symlink loop"]),
    "NUL byte": (lambda t, m: f"{t}/da\0ta", DataError, ["data.root=", "da\\x00ta", "NUL"]),
    "name too long": (lambda t, m: str(t / ("d" * 300)), DataError, ["too long"]),
    "unknown user": (lambda t, m: "~no-such-bslrun-user/d", DataError, ["home folder"]),
    "unsearchable root": (_unsearchable_root, ResourceError, ["permission denied"]),
    "unreadable file": (_unreadable_file, ResourceError, ["train-images", "permission denied"]),
    "folders named like files": (_folders_named_like_files, DataError, ["files missing"]),
}


@pytest.mark.parametrize("download", [False, True], ids=["offline", "download"])
@pytest.mark.parametrize("case", list(ROOT_FAULTS), ids=list(ROOT_FAULTS))
def test_data_root_faults_are_one_line(tmp_path, monkeypatch, case, download):
    setup, exc_type, words = ROOT_FAULTS[case]
    root = setup(tmp_path, monkeypatch)
    with pytest.raises(exc_type) as excinfo:
        fetch(MNIST, image_cfg(root=root, download=download))
    message = one_line_error(excinfo)
    assert all(word in message for word in words), message
    exc = excinfo.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


WRITE_FAULTS = {
    "permission denied": (errno.EACCES, ResourceError),
    "disk full": (errno.ENOSPC, ResourceError),
    "read-only file system": (errno.EROFS, ResourceError),
    "a file in the way": (errno.EEXIST, DataError),
}


@pytest.mark.parametrize("case", list(WRITE_FAULTS), ids=list(WRITE_FAULTS))
def test_download_that_cannot_be_written(monkeypatch, tmp_path, fake_fashion, case):
    code, exc_type = WRITE_FAULTS[case]
    stem = "t10k-labels-idx1-ubyte"
    folder = tmp_path / "fashion_mnist"
    place_fashion(folder, {s: r for s, r in fake_fashion.items() if s != stem}, "uncompressed")
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(lambda url: gz(fake_fashion[stem])))

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(folder))

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", refused)
    cfg = image_cfg(name="fashion_mnist", root=str(tmp_path), download=True)
    with pytest.raises(exc_type, match="cannot write .*writable folder") as excinfo:
        fetch(FASHION_MNIST, cfg)
    assert os.strerror(code) in one_line_error(excinfo)
    assert sorted(p.name for p in folder.iterdir()) == sorted(s for s in STEMS if s != stem)


# ----------------------------------------------------------------------------- download


def shared_gz(url: str) -> bytes:
    return (MNIST_DIR / url.rsplit("/", 1)[1]).read_bytes()


@needs_mnist
def test_download_falls_back_to_the_next_mirror_and_caches(monkeypatch, tmp_path):
    def serve(url):
        if url.startswith(MNIST.mirrors[0]):
            raise URLError("connection refused (test)")
        return shared_gz(url)

    fake = FakeUrlopen(serve)
    monkeypatch.setattr(mnist, "urlopen", fake)
    arrays = fetch(MNIST, image_cfg(root=None, download=True))
    cache = tmp_path / "cache" / "bslrun" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for stem in STEMS:
        # The downloaded bytes are kept as served, and they decompress to the originals.
        assert (cache / f"{stem}.gz").read_bytes() == (MNIST_DIR / f"{stem}.gz").read_bytes()
        raw = gzip.decompress((cache / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == README_MD5[stem]
    assert [url for url, _ in fake.calls[:2]] == [
        MNIST.mirrors[0] + "train-images-idx3-ubyte.gz",
        MNIST.mirrors[1] + "train-images-idx3-ubyte.gz",
    ]
    assert all(timeout is not None and timeout > 0 for _, timeout in fake.calls)
    assert np.bincount(arrays["t10k-labels-idx1-ubyte"]).tolist() == TEST_COUNTS
    # A second fetch uses the cache and goes nowhere near the network.
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(offline))
    again = fetch(MNIST, image_cfg(root=None, download=True))
    assert mnist.urlopen.calls == []
    np.testing.assert_array_equal(
        again["train-labels-idx1-ubyte"], arrays["train-labels-idx1-ubyte"]
    )


@needs_mnist
def test_download_with_wrong_bytes_tries_the_next_mirror(monkeypatch, tmp_path):
    link_shared(tmp_path / "mnist", skip=["t10k-labels-idx1-ubyte"])
    good = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    wrong = gz(idx_bytes(np.zeros(10000, np.uint8)))  # well formed, wrong labels
    served = {MNIST.mirrors[0]: wrong, MNIST.mirrors[1]: good[:-20], MNIST.mirrors[2]: good}
    fake = FakeUrlopen(lambda url: served[url.rsplit("/", 1)[0] + "/"])
    monkeypatch.setattr(mnist, "urlopen", fake)
    arrays = fetch(MNIST, image_cfg(root=str(tmp_path), download=True))
    assert len(fake.calls) == 3
    assert np.bincount(arrays["t10k-labels-idx1-ubyte"]).tolist() == TEST_COUNTS
    assert (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes() == good
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(".")]


@needs_mnist
def test_download_where_every_mirror_is_wrong_leaves_nothing(monkeypatch, tmp_path):
    link_shared(tmp_path / "mnist", skip=["t10k-labels-idx1-ubyte"])
    wrong = gz(idx_bytes(np.zeros(10000, np.uint8)))
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(lambda url: wrong))
    with pytest.raises(DataError, match="is not MNIST's .*: its SHA-256") as excinfo:
        fetch(MNIST, image_cfg(root=str(tmp_path), download=True))
    message = one_line_error(excinfo)
    assert all(m in message for m in MNIST.mirrors)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(tmp_path / "mnist") in message
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(
        f"{s}.gz" for s in STEMS if s != "t10k-labels-idx1-ubyte"
    )


@needs_mnist
def test_unwritable_data_folder_is_a_data_error(monkeypatch, tmp_path):
    (tmp_path / "mnist").write_text("a file where the folder should be")
    monkeypatch.setattr(mnist, "urlopen", FakeUrlopen(shared_gz))
    with pytest.raises(DataError, match="cannot write .*writable folder") as excinfo:
        fetch(MNIST, image_cfg(root=str(tmp_path), download=True))
    one_line_error(excinfo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]


def test_offline_download_lists_files_folder_and_settings(tmp_path):
    with pytest.raises(DataError) as excinfo:
        fetch(MNIST, image_cfg(root=str(tmp_path), download=True))
    message = one_line_error(excinfo)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "data.root" in message and "BSLRUN_DATA_DIR" in message
    assert [url for url, _ in mnist.urlopen.calls] == [
        m + "train-images-idx3-ubyte.gz" for m in MNIST.mirrors
    ]
    assert not (tmp_path / "mnist").exists() or not list((tmp_path / "mnist").iterdir())


def test_offline_fashion_download_lists_files_folder_and_forms(tmp_path):
    with pytest.raises(DataError) as excinfo:
        fetch(FASHION_MNIST, image_cfg(name="fashion_mnist", root=str(tmp_path), download=True))
    message = one_line_error(excinfo)
    assert FASHION_MNIST.mirrors[0] in message
    assert str(tmp_path / "fashion_mnist") in message and "uncompressed versions" in message


@needs_mnist
def test_fashion_download_is_checked_against_the_gzip_checksum(monkeypatch, tmp_path):
    fake = FakeUrlopen(shared_gz)  # serves MNIST's files: well formed, but not Fashion-MNIST
    monkeypatch.setattr(mnist, "urlopen", fake)
    cfg = image_cfg(name="fashion_mnist", root=str(tmp_path), download=True)
    with pytest.raises(
        DataError, match=r"is not Fashion-MNIST's .*SHA-256 \(gzip file as served\)"
    ):
        load(cfg, streams(0).data)
    assert fake.calls[0][0] == FASHION_MNIST.mirrors[0] + "train-images-idx3-ubyte.gz"
    folder = tmp_path / "fashion_mnist"
    assert not folder.exists() or not list(folder.iterdir())


# ----------------------------------------------------------------------------- registry, config


def test_registered_as_classification_sets():
    registered = datasets()
    assert registered["mnist"].loader is mnist.load_mnist
    assert registered["fashion_mnist"].loader is mnist.load_fashion_mnist
    assert registered["mnist"].task == registered["fashion_mnist"].task == "classification"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_yaml_composes_to_the_image_schema(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bslrun import cli
    from bslrun.registry import register

    register()
    path = cli.CONFIG_DIR / "data" / f"{name}.yaml"
    assert path.read_text().startswith("# ")
    with initialize_config_dir(config_dir=str(cli.CONFIG_DIR), version_base="1.3"):
        dcfg = compose("config", overrides=[f"data={name}", "data.binarize=dynamic"])
    data = OmegaConf.to_object(dcfg).data
    assert isinstance(data, ImageDataConfig)
    assert data.name == name and data.binarize is Binarize.dynamic


# ----------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def raw_mnist():
    if not MNIST_DIR.is_dir():
        pytest.skip("shared MNIST copy not present")
    return {stem: read_idx(MNIST_DIR / f"{stem}.gz") for stem in STEMS}


@pytest.fixture(scope="module")
def default():
    if not MNIST_DIR.is_dir():
        pytest.skip("shared MNIST copy not present")
    return mnist.load_mnist(image_cfg(), streams(0).data)


def rows(split) -> Counter:
    """Multiset of (pixels as bytes, label) pairs."""
    pixels = np.rint(split.x * 255).astype(np.uint8)
    return Counter(p.tobytes() + bytes([int(y)]) for p, y in zip(pixels, split.y, strict=True))


@needs_mnist
def test_default_split_sizes_types_and_spec(default):
    assert (len(default.train), len(default.val), len(default.test)) == (50000, 10000, 10000)
    for split in (default.train, default.val, default.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert split.x.shape == (len(split), 784)
        assert split.x.min() == 0.0 and split.x.max() == 1.0
    spec = default.spec
    assert spec.name == "mnist" and spec.task == "classification"
    assert spec.num_classes == 10 and spec.input_dim == 784
    assert spec.image_shape == (28, 28, 1) and spec.n_total == 70000
    assert spec.target_name == "digit" and spec.feature_names == ()
    assert spec.dynamic_binarize is False


@needs_mnist
def test_test_split_is_the_official_test_set(default, raw_mnist):
    assert np.bincount(default.test.y, minlength=10).tolist() == TEST_COUNTS
    images = raw_mnist["t10k-images-idx3-ubyte"].reshape(10000, 784)
    np.testing.assert_array_equal(default.test.x, images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(default.test.y, raw_mnist["t10k-labels-idx1-ubyte"])
    assert default.test.x.mean(dtype=np.float64) == pytest.approx(TEST_MEAN, abs=5e-7)


@needs_mnist
def test_train_and_val_partition_the_official_training_set(default, raw_mnist):
    train, val = rows(default.train), rows(default.val)
    full = np.concatenate([default.train.x, default.val.x])
    assert full.mean(dtype=np.float64) == pytest.approx(TRAIN_MEAN, abs=5e-7)
    labels = np.concatenate([default.train.y, default.val.y])
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    images = raw_mnist["train-images-idx3-ubyte"].reshape(60000, 784)
    reference = Counter(
        p.tobytes() + bytes([int(y)])
        for p, y in zip(images, raw_mnist["train-labels-idx1-ubyte"], strict=True)
    )
    assert train + val == reference  # every training image used exactly once
    # Disjoint rows: a row in both splits would need a duplicate in the original.
    shared = set(train) & set(val)
    assert all(train[r] + val[r] <= reference[r] for r in shared)


@needs_mnist
def test_same_seed_same_splits_other_seed_other_splits(default, raw_mnist):
    again = mnist.load_mnist(image_cfg(), streams(0).data)
    for part in ("train", "val", "test"):
        a, b = getattr(default, part), getattr(again, part)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = mnist.load_mnist(image_cfg(val_size=1000, train_subset=0.1), streams(1).data)
    assert len(other.val) == 1000 and len(other.train) == round(0.1 * 59000)
    # Another seed draws other validation images (two random draws share about 1/6).
    assert sum((rows(other.val) - rows(default.val)).values()) > 500
    # The subset comes from the training images left after the carve-out: no
    # image is used twice, and the test split is untouched.
    images = raw_mnist["train-images-idx3-ubyte"].reshape(60000, 784)
    reference = Counter(
        p.tobytes() + bytes([int(y)])
        for p, y in zip(images, raw_mnist["train-labels-idx1-ubyte"], strict=True)
    )
    assert rows(other.train) + rows(other.val) <= reference
    np.testing.assert_array_equal(other.test.x, default.test.x)


@needs_mnist
def test_no_validation_split(default):
    data = mnist.load_mnist(image_cfg(val_size=0, train_subset=0.05), streams(0).data)
    assert data.val is None and len(data.train) == 3000


@needs_mnist
def test_static_threshold_binarisation(default):
    data = mnist.load_mnist(image_cfg(binarize="static", threshold=0.3), streams(0).data)
    for part in ("train", "val", "test"):
        intensities, binary = getattr(default, part).x, getattr(data, part).x
        assert binary.dtype == np.float32
        np.testing.assert_array_equal(binary, (intensities > 0.3).astype(np.float32))
    assert not data.spec.dynamic_binarize


@needs_mnist
def test_static_bernoulli_binarisation(default):
    cfg = image_cfg(binarize="static", threshold=None, val_size=5000, train_subset=0.2)
    a = mnist.load_mnist(cfg, streams(0).data)
    b = mnist.load_mnist(cfg, streams(0).data)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part).x, getattr(b, part).x)  # fixed once
    for binary, intensities in ((a.test.x, default.test.x),):
        assert set(np.unique(binary)) == {0.0, 1.0}
        assert np.all(binary[intensities == 0] == 0) and np.all(binary[intensities == 1] == 1)
        # E[x] = p: 7.8M draws, standard error of the mean below 1e-4.
        assert abs(binary.mean(dtype=np.float64) - intensities.mean(dtype=np.float64)) < 1e-3
    assert set(np.unique(a.train.x)) == {0.0, 1.0} and not a.spec.dynamic_binarize
    assert abs(a.train.x.mean(dtype=np.float64) - TRAIN_MEAN) < 2e-3


@needs_mnist
def test_dynamic_binarisation_keeps_training_intensities(default):
    data = mnist.load_mnist(image_cfg(binarize="dynamic"), streams(0).data)
    assert data.spec.dynamic_binarize is True
    np.testing.assert_array_equal(data.train.x, default.train.x)
    for part in ("val", "test"):
        binary, intensities = getattr(data, part).x, getattr(default, part).x
        assert set(np.unique(binary)) == {0.0, 1.0}
        assert np.all(binary[intensities == 0] == 0)
        assert abs(binary.mean(dtype=np.float64) - intensities.mean(dtype=np.float64)) < 1e-3
        np.testing.assert_array_equal(getattr(data, part).y, getattr(default, part).y)


@needs_mnist
def test_the_parent_of_a_named_folder_works_as_root():
    found = {s: mnist.find_file(MNIST, s, MNIST_DIR.parent) for s in STEMS}
    assert found == {s: MNIST_DIR / f"{s}.gz" for s in STEMS}


# ----------------------------------------------------------------------------- out of distribution


def test_out_of_distribution_falls_back_to_seeded_pixel_permutations(tmp_path):
    cfg = image_cfg(root=str(tmp_path), binarize="none")  # no Fashion-MNIST there
    test_x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    images, source = mnist.out_of_distribution(cfg, test_x, jax.random.PRNGKey(1))
    assert int(source) == 0 and "permuted" in mnist.OOD_SOURCES[0]
    # One permutation of the pixels, the same for every image: each row keeps its values.
    column = [int(np.flatnonzero(test_x[0] == v)[0]) for v in images[0]]
    assert sorted(column) == list(range(784)) and column != list(range(784))
    np.testing.assert_array_equal(images, test_x[:, column])
    again, _ = mnist.out_of_distribution(cfg, test_x, jax.random.PRNGKey(1))
    other, _ = mnist.out_of_distribution(cfg, test_x, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)


def test_out_of_distribution_reads_fashion_mnist_where_the_root_holds_it(tmp_path, fake_fashion):
    place_fashion(tmp_path / "fashion_mnist", fake_fashion, "gzip as served")
    test_x = np.zeros((2, 784), np.float32)
    cfg = image_cfg(root=str(tmp_path), binarize="none")
    images, source = mnist.out_of_distribution(cfg, test_x, jax.random.PRNGKey(0))
    assert mnist.OOD_SOURCES[int(source)] == "Fashion-MNIST test images"
    expected = mnist.parse_idx(fake_fashion["t10k-images-idx3-ubyte"], "t10k", "")[:2]
    np.testing.assert_allclose(images, expected.reshape(2, -1) / 255.0, rtol=1e-6)
    # Binarised inputs are not compared with intensities: the permuted images serve.
    binary = image_cfg(root=str(tmp_path), binarize="static")
    assert int(mnist.out_of_distribution(binary, test_x, jax.random.PRNGKey(0))[1]) == 0
