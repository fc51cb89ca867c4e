"""Fashion-MNIST files: IDX parsing, verification, local copies, downloads and the tensor cache.

Everything here works on the *decompressed* IDX bytes: Debian's package recompressed the upstream
``.gz`` files, so only the content checksums (SHA-256 of the decompressed bytes) identify the data
wherever it came from. The upstream ``.gz`` MD5s are used for downloads only.

The tables :data:`SPECS` and :data:`MIRRORS` and the directory :data:`DEBIAN_DIR` are read at call
time, so tests can monkeypatch them to serve tiny synthetic files.

The IDX parser is ours, not ``torchvision.datasets.mnist.read_image_file`` / ``read_label_file``
(``benchmarks/bench_torchvision.py`` compares them on the real files; their speed is alike, the
SHA-256 costs more than either parse). torchvision's reader takes a path, not the bytes this
module has just decompressed within a size bound; its checks are ``assert`` statements (gone
under ``python -O``) and ``strict=False`` skips its length check, so a truncated file, trailing
bytes, a wrong count or a labels file read as images all end in a bare ``RuntimeError`` about a
tensor view, and an empty file in "invalid literal for int()", none naming the file; it checks
no content checksum (a changed pixel passes), and it returns labels as int64. :func:`parse_idx`
checks the magic, the count, the dimensions, the length and the SHA-256, and says which failed.
"""

import contextlib
import gzip
import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from fashion_cnn import _io
from fashion_cnn.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdxSpec:
    """What one IDX file must contain.

    Attributes:
        name: File name without ``.gz`` (``train-images-idx3-ubyte``).
        magic: IDX magic number: 2051 for uint8 images (3 dims), 2049 for uint8 labels (1 dim).
        shape: Dimensions stored in the header, e.g. ``(60000, 28, 28)``.
        sha256: SHA-256 of the whole decompressed file (header + data).
        gz_md5: MD5 of the upstream ``.gz`` file, checked on downloads only.
    """

    name: str
    magic: int
    shape: tuple[int, ...]
    sha256: str
    gz_md5: str

    @property
    def header_size(self) -> int:
        return 4 + 4 * len(self.shape)

    @property
    def size(self) -> int:
        """Size of the decompressed file in bytes."""
        return self.header_size + int(np.prod(self.shape))

    def header(self) -> bytes:
        """The IDX header this spec implies (big-endian int32 magic, then each dimension)."""
        return np.array((self.magic, *self.shape), dtype=">i4").tobytes()


IMAGES_MAGIC = 2051  # 0x00000803: uint8 data, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8 data, 1 dimension

# Keys are the names the rest of the package uses; the values can be swapped for synthetic files.
SPECS: dict[str, IdxSpec] = {
    "train_images": IdxSpec(
        name="train-images-idx3-ubyte",
        magic=IMAGES_MAGIC,
        shape=(60000, 28, 28),
        sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        gz_md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "train_labels": IdxSpec(
        name="train-labels-idx1-ubyte",
        magic=LABELS_MAGIC,
        shape=(60000,),
        sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        gz_md5="25c81989df183df01b3e8a0aad5dffbe",
    ),
    "test_images": IdxSpec(
        name="t10k-images-idx3-ubyte",
        magic=IMAGES_MAGIC,
        shape=(10000, 28, 28),
        sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        gz_md5="bef4ecab320f06d8554ea6380940ec79",
    ),
    "test_labels": IdxSpec(
        name="t10k-labels-idx1-ubyte",
        magic=LABELS_MAGIC,
        shape=(10000,),
        sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        gz_md5="bb300cfdad3c16e7a12a480ee83cd310",
    ),
}

# torchvision's mirror; each file is fetched as MIRROR + name + ".gz".
MIRRORS: Sequence[str] = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
DOWNLOAD_TIMEOUT_S = 30.0
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
CACHE_NAME = "fashion_mnist_uint8.pt"
_CACHE_FORMAT = 1
_CHUNK = 1 << 20

FIXES = (
    "Ways out:\n"
    "  - install the Debian package: apt-get install dataset-fashion-mnist "
    f"(puts the files in {DEBIAN_DIR})\n"
    "  - pass --data.source_dir DIR, a folder holding the four IDX files (.gz or decompressed)\n"
    "  - pass --data.data_dir DIR (or set FASHION_CNN_DATA_DIR) to a folder already holding them\n"
    "  - connect to the internet and keep --data.download true"
)


class _Invalid(Exception):
    """One candidate file failed verification; the message says why (without the path)."""


# --------------------------------------------------------------------------------------------
# Parsing and verification


def parse_idx(data: bytes | bytearray, spec: IdxSpec) -> np.ndarray:
    """Check decompressed IDX bytes against ``spec`` and return them as a uint8 array.

    Checks, in order: header length, magic number, dimensions, data length, SHA-256.

    Raises:
        ValueError: Describing the first check that failed (without naming the file: the caller
            knows where the bytes came from).
    """
    if len(data) < 4:
        raise ValueError(f"truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != spec.magic:
        kind = "images" if spec.magic == IMAGES_MAGIC else "labels"
        raise ValueError(f"wrong magic number {magic} (expected {spec.magic} for uint8 {kind})")
    if len(data) < spec.header_size:
        raise ValueError(f"truncated: {len(data)} bytes, the header alone needs {spec.header_size}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", len(spec.shape), 4))
    if shape[0] != spec.shape[0]:
        raise ValueError(f"wrong count: holds {shape[0]} items, expected {spec.shape[0]}")
    if shape != spec.shape:
        raise ValueError(f"wrong dimensions {shape}, expected {spec.shape}")
    if len(data) < spec.size:
        raise ValueError(f"truncated: {len(data)} bytes, expected {spec.size}")
    if len(data) > spec.size:
        raise ValueError(f"{len(data) - spec.size} unexpected trailing bytes after the data")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ValueError(f"wrong checksum: SHA-256 {digest}, expected {spec.sha256}")
    return np.frombuffer(data, np.uint8, offset=spec.header_size).reshape(spec.shape)


def _decompress(raw: bytes, limit: int) -> bytes:
    """Decompress gzip ``raw``, reading at most ``limit + 1`` bytes."""
    try:
        # Bounded read: a wrong or hostile file cannot make us allocate more than limit + 1 bytes.
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            return f.read(limit + 1)
    except EOFError as e:
        raise _Invalid(f"truncated gzip stream ({len(raw)} compressed bytes): {e}") from e
    except OSError as e:  # gzip.BadGzipFile: wrong magic bytes, CRC or length check failed
        raise _Invalid(f"not a valid gzip file: {e}") from e
    except zlib.error as e:  # corrupt deflate data
        raise _Invalid(f"corrupt gzip data: {e}") from e


def _read_verified(path: Path, spec: IdxSpec) -> tuple[np.ndarray, bytes]:
    """Read ``path`` (``.gz`` or plain IDX), verify it, return (array, the file's own bytes).

    Raises:
        _Invalid: The file exists but is not the expected content.
        OSError: The file cannot be read.
    """
    if path.name.endswith(".gz"):
        # A .gz is at most a little larger than its content; anything bigger is not our file.
        limit = spec.size + spec.size // 100 + 65536
        size = path.stat().st_size
        if size > limit:
            raise _Invalid(f"too large: {size} bytes, expected at most {limit}")
        raw = path.read_bytes()
        data = _decompress(raw, spec.size)
    else:
        # One byte more than expected is enough for parse_idx to report an over-long file.
        with path.open("rb") as f:
            raw = data = f.read(spec.size + 1)
    try:
        return parse_idx(data, spec), raw
    except ValueError as e:
        raise _Invalid(str(e)) from e


def read_idx(path: str | os.PathLike[str], spec: IdxSpec) -> np.ndarray:
    """Read and verify one IDX file (plain or ``.gz``) against ``spec``.

    Returns:
        The data as a uint8 array of ``spec.shape`` (read-only view of the file's bytes).

    Raises:
        DataError: Naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        return _read_verified(path, spec)[0]
    except _Invalid as e:
        raise DataError(f"{path}: {e}") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


# --------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """:func:`fashion_cnn._io.atomic_write`, with write failures reported as :class:`DataError`.

    An exception inside the block (or a crash) never leaves a partial file under ``path``; the
    hidden temp file is removed on exceptions and never matches a name this module looks for.

    Raises:
        DataError: The directory cannot be created or written to.
    """
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot write to the data directory {directory}: {e}. Set FASHION_CNN_DATA_DIR "
            "or pass --data.data_dir to a writable directory."
        ) from e
    try:
        with _io.atomic_write(path) as f:
            yield f  # type: ignore[misc]  # opened "wb": binary
    except OSError as e:  # disk full, I/O error, quota, no permission...
        raise DataError(
            f"Cannot write {path}: {e}. Free space there, or set FASHION_CNN_DATA_DIR or "
            "pass --data.data_dir to a writable directory."
        ) from e


# --------------------------------------------------------------------------------------------
# Finding one verified file: data_dir, then local sources, then mirrors


def _candidates(directory: Path, spec: IdxSpec) -> list[Path]:
    return [directory / spec.name, directory / f"{spec.name}.gz"]


def _fetch_one(
    spec: IdxSpec, data_dir: Path, source_dirs: Sequence[Path], download: bool, unreachable: set[str]
) -> tuple[np.ndarray | None, list[str]]:
    """Return a verified array for ``spec``, making sure ``data_dir`` holds a verified file.

    ``unreachable`` collects mirrors that could not be connected to, so the next files skip them
    instead of waiting for another timeout each.

    Returns:
        (array or None, one line per place looked at and what was found there).
    """
    looked: list[str] = []
    corrupt: list[Path] = []

    # (1) data_dir itself
    for path in _candidates(data_dir, spec):
        if not path.exists():
            continue
        try:
            array = _read_verified(path, spec)[0]
        except (_Invalid, OSError) as e:
            looked.append(f"{path}: {e}")
            corrupt.append(path)
            continue
        for bad, reason in zip(corrupt, looked, strict=True):
            log.warning("%s; removed it, %s is valid", reason, path)
            with contextlib.suppress(OSError):
                bad.unlink()
        return array, []
    if not corrupt:
        looked.append(f"{data_dir}/{spec.name}[.gz]: not found")

    def replaced(new: Path, origin: str) -> None:
        for bad in corrupt:
            reason = next(line for line in looked if line.startswith(f"{bad}:"))
            log.warning("%s; replaced it with a verified copy from %s", reason, origin)
            if bad != new:
                with contextlib.suppress(OSError):
                    bad.unlink()

    # (2) local sources, copied byte for byte: their .gz may differ from upstream, the content not
    for source in source_dirs:
        if source.resolve() == data_dir.resolve():
            continue
        found = False
        for path in _candidates(source, spec):
            if not path.is_file():
                continue
            found = True
            try:
                array, raw = _read_verified(path, spec)
            except (_Invalid, OSError) as e:
                looked.append(f"{path}: {e}")
                continue
            target = data_dir / path.name
            with atomic_write(target) as f:
                f.write(raw)
            log.info("Copied %s to %s", path, target)
            replaced(target, str(path))
            return array, looked
        if not found:
            looked.append(f"{source}/{spec.name}[.gz]: not found")

    # (3) mirrors
    if not download:
        looked.append("download: disabled (download=False)")
        return None, looked
    if not MIRRORS:
        looked.append("download: no mirrors configured")
    for mirror in MIRRORS:
        url = f"{mirror.rstrip('/')}/{spec.name}.gz"
        if mirror in unreachable:
            looked.append(f"{url}: skipped, the server was unreachable for an earlier file")
            continue
        target = data_dir / f"{spec.name}.gz"
        try:
            array = _download_verified(url, target, spec)
        except DataError:
            raise  # unwritable data_dir: no point trying other mirrors
        except (_Invalid, OSError, ValueError) as e:
            # OSError covers URLError, HTTPError, timeouts and connection resets.
            looked.append(f"{url}: {e}")
            if isinstance(e, TimeoutError | urllib.error.URLError) and not isinstance(
                e, urllib.error.HTTPError
            ):
                unreachable.add(mirror)
            continue
        replaced(target, url)
        return array, looked
    return None, looked


def _download_verified(url: str, target: Path, spec: IdxSpec) -> np.ndarray:
    """Download ``url`` into memory (26 MB at most), check the .gz MD5, then the content.

    Only then is ``target`` written (atomically): a failed or tampered download leaves nothing.
    """
    log.info("Downloading %s", url)
    limit = spec.size + spec.size // 100 + 65536
    md5 = hashlib.md5()
    buffer = bytearray()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        while chunk := response.read(_CHUNK):
            buffer += chunk
            if len(buffer) > limit:
                raise _Invalid(f"too large: more than {limit} bytes")
            md5.update(chunk)
    if md5.hexdigest() != spec.gz_md5:
        raise _Invalid(f"wrong MD5 {md5.hexdigest()} of the .gz file, expected {spec.gz_md5}")
    raw = bytes(buffer)
    try:
        array = parse_idx(_decompress(raw, spec.size), spec)
    except ValueError as e:
        raise _Invalid(str(e)) from e
    with atomic_write(target) as f:
        f.write(raw)
    return array


# --------------------------------------------------------------------------------------------
# The decoded-tensor cache


def _tensor_sha256(tensor: torch.Tensor, spec: IdxSpec) -> str:
    """SHA-256 of the IDX file ``tensor`` came from: the header implied by ``spec``, then the data.

    This lets the cache be checked against the same table as the files, with no second checksum
    to keep in sync (~0.03 s for the 55 MB of Fashion-MNIST on one core).
    """
    digest = hashlib.sha256(spec.header())
    digest.update(memoryview(tensor.numpy()).cast("B"))  # type: ignore[arg-type]  # numpy arrays are buffers
    return digest.hexdigest()


def _load_cache(path: Path, specs: dict[str, IdxSpec]) -> dict[str, torch.Tensor] | None:
    """Load and really verify the cache; None (with a warning if it exists) when it is not valid."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("format") != _CACHE_FORMAT:
            raise ValueError("unknown cache format")
        tensors = {}
        for key, spec in specs.items():
            tensor = content.get(key)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"no tensor {key!r}")
            if tensor.dtype != torch.uint8 or tuple(tensor.shape) != spec.shape:
                raise ValueError(
                    f"{key} is {tensor.dtype} {tuple(tensor.shape)}, expected uint8 {spec.shape}"
                )
            if not tensor.is_contiguous() or _tensor_sha256(tensor, spec) != spec.sha256:
                raise ValueError(f"{key} does not match the SHA-256 of {spec.name}")
            tensors[key] = tensor
    except Exception as e:  # torch.load raises many types on damaged files; none may pass
        log.warning("Ignoring the tensor cache %s (%s); rebuilding it from the IDX files", path, e)
        return None
    return tensors


def _save_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        with atomic_write(path) as f:
            torch.save({"format": _CACHE_FORMAT, **tensors}, f)
    except (DataError, OSError) as e:
        # The verified IDX files are enough to work; the cache only makes the next start faster.
        log.warning("Could not write the tensor cache %s: %s", path, e)


def load_verified(data_dir: Path, source_dirs: Sequence[Path], download: bool) -> dict[str, torch.Tensor]:
    """Return all of Fashion-MNIST as verified uint8 tensors, fetching whatever is missing.

    Order: the tensor cache in ``data_dir``; the IDX files in ``data_dir``; a copy from each of
    ``source_dirs``; the mirrors (if ``download``). Invalid files in ``data_dir`` are replaced
    (with a warning) from the first verified source. A fresh cache is written after a rebuild.

    Args:
        data_dir: Where verified files and the cache live.
        source_dirs: Local folders to copy the IDX files from, in order.
        download: Whether to try :data:`MIRRORS`.

    Returns:
        ``{key: tensor}`` for every key of :data:`SPECS`, shaped like ``spec.shape``, uint8.

    Raises:
        DataError: A file is not available from any source (the message lists every place looked
            at, what was wrong there, and the ways out), or ``data_dir`` is not writable.
    """
    specs = dict(SPECS)  # one consistent snapshot, even if the table is swapped meanwhile
    cache = data_dir / CACHE_NAME
    tensors = _load_cache(cache, specs)
    if tensors is not None:
        log.debug("Loaded verified Fashion-MNIST tensors from %s", cache)
        return tensors

    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(
            f"The data directory {data_dir} is a file. Set FASHION_CNN_DATA_DIR or pass "
            "--data.data_dir to a writable directory."
        )
    arrays: dict[str, np.ndarray] = {}
    failures: list[str] = []
    unreachable: set[str] = set()
    for key, spec in specs.items():
        array, looked = _fetch_one(spec, data_dir, source_dirs, download, unreachable)
        if array is None:
            failures.append(f"{spec.name}, looked at:\n" + "\n".join(f"  - {x}" for x in looked))
        else:
            arrays[key] = array
    if failures:
        summary = f"Fashion-MNIST is not available: no valid copy of {len(failures)} file(s)."
        raise DataError("\n".join([summary, *failures, FIXES]))
    # np.frombuffer views are read-only; copy once so torch owns writable memory.
    tensors = {key: torch.from_numpy(array.copy()) for key, array in arrays.items()}
    _save_cache(cache, tensors)
    return tensors
