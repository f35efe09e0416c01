"""Input discovery: turn a video collection into labelled, uniquely keyed VideoRefs.

Three input kinds are understood (see `discover`):

(a) a folder with one sub-folder per class (UCF101 layout);
(b) a CSV or Parquet list with columns path,label[,split];
(c) a dataset root with official split files (UCF101 classInd/trainlist/testlist, HMDB51
    <class>_test_split<N>.txt), chosen with split=N.

Nothing is decoded here: a video named by a list or split file but missing on disk still gets a
VideoRef (the worker reports it as an error row), so no input is silently dropped.

Each kind may also live on object storage (`s3://bucket/prefix`, any fsspec URL): class
folders are found with one recursive listing, and relative paths in a list or split file
are taken relative to the prefix that holds it. Videos get the same keys and sources as
they would from a local copy of the same tree, so both give the same dataset version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from pipeline import storage
from pipeline.records import SPLITS, VideoRef
from pipeline.storage import Location

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)
LIST_SUFFIXES = (".csv", ".parquet")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # explicit ASCII classes: non-ASCII letters are unsafe too
_REPEATS = re.compile(r"_{2,}")
_UCF_LIST_DIRS = ("", "ucfTrainTestlist")
_UCF_VIDEO_DIRS = ("UCF-101",)
_HMDB_LIST_DIRS = ("", "testTrainMulti_7030_splits")
_HMDB_VIDEO_DIRS = ("hmdb51_org",)
_HMDB_SPLIT = {"1": "train", "2": "test"}  # "0": not used in this split


# --------------------------------------------------------------------------- keys


def make_key(source: str) -> str:
    """A WebDataset-safe sample key from a relative path: only [A-Za-z0-9_-], never empty.

    The extension is dropped, every other character (path separators, dots, spaces, quotes,
    non-ASCII letters) becomes "_", runs of "_" collapse to one, and leading "_"/"-" and
    trailing "_" are stripped (a leading dash reads as an option to command-line tools).
    A URL's query string and fragment are ignored.
    """
    text = str(source)
    if "://" in text:
        text = re.split(r"[?#]", text, maxsplit=1)[0]
    stem, dot, ext = text.rpartition(".")
    # Drop the extension only when the dot belongs to the file name, not to a folder.
    if dot and stem and "/" not in ext and "\\" not in ext:
        text = stem
    key = _REPEATS.sub("_", _UNSAFE.sub("_", text)).lstrip("_-").rstrip("_")
    return key or "video"


def _short_hash(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]


def _assign_keys(items: list[dict]) -> list[VideoRef]:
    """VideoRefs with unique keys, sorted by key: colliding keys get "-" + sha1(source)[:8]."""
    sources = Counter(item["source"] for item in items)
    twice = sorted(s for s, n in sources.items() if n > 1)
    if twice:
        raise ValueError(f"videos listed more than once: {twice[:5]}")
    base = [make_key(item["source"]) for item in items]
    counts = Counter(base)
    refs = []
    for item, stem in zip(items, base, strict=True):
        key = f"{stem}-{_short_hash(item['source'])}" if counts[stem] > 1 else stem
        refs.append(VideoRef(key=key, **item))
    keys = Counter(ref.key for ref in refs)
    clash = sorted(k for k, n in keys.items() if n > 1)
    if clash:  # only if a hashed key meets a file literally named like it
        raise ValueError(f"sample keys are not unique even after hashing: {clash[:5]}")
    return sorted(refs, key=lambda r: r.key)


# --------------------------------------------------------------------------- helpers


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_video(name: str) -> bool:
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _check_split(value: str, where: str) -> str:
    if value not in SPLITS:
        raise ValueError(f"split {value!r} in {where} is not one of {SPLITS}")
    return value


def _warn_missing(items: list[dict], where: str) -> None:
    missing = [it["source"] for it in items if "://" not in it["uri"] and not os.path.exists(it["uri"])]
    if missing:
        log.warning(
            "%d of %d videos named in %s are not on disk (first: %s); they will be reported as errors",
            len(missing),
            len(items),
            where,
            missing[0],
        )


def _item(uri: str, source: str, label: str, label_id: int, split: str) -> dict:
    return {"uri": uri, "source": source, "label": label, "label_id": label_id, "split": split}


def _uri(path: Location) -> str:
    """What a worker opens: an absolute local path, or the URL."""
    return str(path) if storage.is_remote(path) else str(Path(path).absolute())


def _rel(path: Location, root: Location) -> str:
    """`path` relative to `root`, as a POSIX path (the video's source)."""
    if storage.is_remote(path):
        return str(path)[len(str(root)) :].lstrip("/")
    return Path(path).relative_to(root).as_posix()


# --------------------------------------------------------------------------- (a) folders


def _walk_videos(folder: Path) -> list[Path]:
    """Video files below `folder` (recursive, hidden files and folders skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_video(f))
    return found


def _local_classes(root: Path) -> tuple[dict[str, list[Location]], list[str]]:
    """Class name -> its videos, and the names of loose videos, of a local folder."""
    loose = [p.name for p in root.iterdir() if p.is_file() and _is_video(p.name)]
    by_label: dict[str, list[Location]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)):
        videos = _walk_videos(sub)
        if videos:
            by_label[sub.name] = list(videos)
    return by_label, loose


def _remote_classes(root: str) -> tuple[dict[str, list[Location]], list[str]]:
    """Class name -> its videos, and the names of loose videos, below a prefix (one listing)."""
    by_label: dict[str, list[Location]] = {}
    loose = []
    for rel in storage.walk_files(root):
        parts = rel.split("/")
        if any(_is_hidden(part) for part in parts) or not _is_video(parts[-1]):
            continue
        if len(parts) == 1:
            loose.append(rel)
        else:
            by_label.setdefault(parts[0], []).append(storage.join(root, rel))
    return dict(sorted(by_label.items())), loose


def _discover_folders(root: Location, default_split: str) -> tuple[list[VideoRef], dict[str, int]]:
    """Layout (a): one sub-folder per class; labels are the sub-folder names."""
    by_label, loose = _remote_classes(str(root)) if storage.is_remote(root) else _local_classes(Path(root))
    if loose:
        log.warning(
            "ignoring %d video files directly in %s (not in a class folder), e.g. %s",
            len(loose),
            root,
            sorted(loose)[0],
        )
    if not by_label:
        raise ValueError(
            f"no videos found in class sub-folders of {root} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if len(by_label) == 1:
        log.warning("only one class folder with videos in %s: %s", root, next(iter(by_label)))
    labels = {name: i for i, name in enumerate(sorted(by_label))}
    items = [
        _item(_uri(p), _rel(p, root), label, labels[label], default_split)
        for label, videos in by_label.items()
        for p in videos
    ]
    return _assign_keys(items), labels


# --------------------------------------------------------------------------- (b) lists


def _read_table(path: Location):
    """A pyarrow Table of a CSV or Parquet list, with path/label/split read as strings."""
    import pyarrow as pa

    source = pa.BufferReader(storage.read_bytes(path)) if storage.is_remote(path) else path
    if _suffix(path) == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(source)
    import pyarrow.csv as pcsv

    # Strings throughout: a label "1" or a path "0001.avi" must not become a number.
    types = {name: pa.string() for name in ("path", "label", "split")}
    return pcsv.read_csv(source, convert_options=pcsv.ConvertOptions(column_types=types))


def _suffix(path: Location) -> str:
    return os.path.splitext(storage.name(path))[1].lower()


def _column(table, name: str, where: Location) -> list[str]:
    if name not in table.column_names:
        raise ValueError(f"{where}: missing required column {name!r} (columns: {table.column_names})")
    values = table.column(name).to_pylist()
    for row, value in enumerate(values, start=1):
        if value is None or not str(value).strip():
            raise ValueError(f"{where}: empty {name!r} in data row {row}")
    return [str(v).strip() for v in values]


def _list_uri(path: str, base: Location) -> str:
    """URLs and absolute paths as written; relative paths against the list file's folder
    (its prefix, for a list on object storage)."""
    if "://" in path or os.path.isabs(path):
        return path
    if storage.is_remote(base):
        return storage.normalize_url(str(storage.join(base, path)))
    return os.path.abspath(os.path.join(base, path))


def _discover_list(path: Location, default_split: str) -> tuple[list[VideoRef], dict[str, int]]:
    """Layout (b): a CSV or Parquet file with columns path,label[,split]."""
    table = _read_table(path)
    paths, labels = _column(table, "path", path), _column(table, "label", path)
    if not paths:
        raise ValueError(f"{path}: the video list is empty")
    splits = _column(table, "split", path) if "split" in table.column_names else [default_split] * len(paths)
    ids = {name: i for i, name in enumerate(sorted(set(labels)))}
    base = storage.parent(path) if storage.is_remote(path) else Path(path).parent.absolute()
    items = [
        _item(_list_uri(p, base), p, lab, ids[lab], _check_split(s, f"{path} row {row}"))
        for row, (p, lab, s) in enumerate(zip(paths, labels, splits, strict=True), start=1)
    ]
    _warn_missing(items, str(path))
    return _assign_keys(items), ids


# --------------------------------------------------------------------------- (c) split files


def _first_dir(root: Location, names: tuple[str, ...]) -> Location:
    """The first existing sub-folder of `root` among `names`, else `root` itself."""
    for name in names:
        if storage.isdir(storage.join(root, name)):
            return storage.join(root, name)
    return root


def _relative(entry: str, where: Location) -> str:
    """A split-file entry as a POSIX relative path; absolute or escaping entries are refused."""
    rel = entry.replace("\\", "/")
    if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
        raise ValueError(f"{where}: entry {entry!r} must be a relative path inside the dataset")
    return rel


def _lines(path: Location) -> list[list[str]]:
    """Whitespace-split, non-empty lines (official lists use CRLF and trailing spaces)."""
    return [ln.split() for ln in storage.read_text(path, errors="replace").splitlines() if ln.strip()]


def _ucf_files(root: Location, split: int) -> tuple[Location, Location, Location] | None:
    for sub in _UCF_LIST_DIRS:
        folder = storage.join(root, sub) if sub else root
        index, train, test = (
            storage.join(folder, n) for n in ("classInd.txt", f"trainlist0{split}.txt", f"testlist0{split}.txt")
        )
        if all(storage.isfile(f) for f in (index, train, test)):
            return index, train, test
    return None


def _ucf_classes(path: Location) -> dict[str, int]:
    classes = {}
    for parts in _lines(path):
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}: expected '<number> <class>' lines, got {' '.join(parts)!r}")
        classes[parts[1]] = int(parts[0]) - 1
    return classes


def _ucf_label(rel: str, number: str | None, classes: dict[str, int], where: Location) -> str:
    """The class of a UCF101 list entry: its number in trainlists, its folder otherwise."""
    if number is not None:
        names = [name for name, i in classes.items() if number.isdigit() and i == int(number) - 1]
        if not names:
            raise ValueError(f"{where}: unknown class number {number!r} for {rel!r}")
        return names[0]
    folder = PurePosixPath(rel.replace("\\", "/")).parts[0]
    if folder in classes:
        return folder
    folded = {name.lower(): name for name in classes}
    if folder.lower() in folded:  # tolerate case differences between folders and classInd
        return folded[folder.lower()]
    raise ValueError(f"{where}: class folder {folder!r} of {rel!r} is not in classInd.txt")


def _discover_ucf(root: Location, files: tuple[Location, Location, Location]) -> tuple[list[dict], dict[str, int]]:
    """Layout (c), UCF101: classInd.txt, trainlist0N.txt and testlist0N.txt."""
    class_ind, train, test = files
    classes = _ucf_classes(class_ind)
    video_dir = _first_dir(root, _UCF_VIDEO_DIRS)
    items = []
    for list_file, split in ((train, "train"), (test, "test")):
        for parts in _lines(list_file):
            rel = _relative(parts[0], list_file)
            label = _ucf_label(rel, parts[1] if len(parts) > 1 else None, classes, list_file)
            path = storage.join(video_dir, rel)
            items.append(_item(_uri(path), _rel(path, root), label, classes[label], split))
    return items, classes


def _hmdb_files(root: Location, split: int) -> list[Location]:
    for sub in _HMDB_LIST_DIRS:
        folder = storage.join(root, sub) if sub else root
        if storage.is_remote(folder):
            found = [storage.join(folder, n) for n in storage.list_files(folder, suffix=f"_test_split{split}.txt")]
        else:
            local = Path(folder)
            found = sorted(local.glob(f"*_test_split{split}.txt")) if local.is_dir() else []
        if found:
            return found
    return []


def _discover_hmdb(root: Location, files: list[Location], split: int) -> tuple[list[dict], dict[str, int]]:
    """Layout (c), HMDB51: <class>_test_split<N>.txt with "name.avi 1|2|0" lines."""
    suffix = f"_test_split{split}.txt"
    names = sorted(storage.name(f)[: -len(suffix)] for f in files)
    classes = {name: i for i, name in enumerate(names)}
    video_dir = _first_dir(root, _HMDB_VIDEO_DIRS)
    items = []
    for list_file in files:
        label = storage.name(list_file)[: -len(suffix)]
        for parts in _lines(list_file):
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{list_file}: expected '<video> 0|1|2' lines, got {' '.join(parts)!r}")
            if parts[1] == "0":
                continue
            path = storage.join(video_dir, label, _relative(parts[0], list_file))
            items.append(_item(_uri(path), _rel(path, root), label, classes[label], _HMDB_SPLIT[parts[1]]))
    return items, classes


def _looked_for(root: Location, split: int | str) -> list[str]:
    ucf = [
        str(storage.join(root, sub, name))
        for sub in _UCF_LIST_DIRS
        for name in ("classInd.txt", f"trainlist0{split}.txt", f"testlist0{split}.txt")
    ]
    hmdb = [str(storage.join(root, sub, f"*_test_split{split}.txt")) for sub in _HMDB_LIST_DIRS]
    return ucf + hmdb


def _has_split_files(root: Location) -> bool:
    return any(_ucf_files(root, n) or _hmdb_files(root, n) for n in (1, 2, 3))


def _discover_split(root: Location, split: int) -> tuple[list[VideoRef], dict[str, int]]:
    """Layout (c): UCF101 split files first, then HMDB51; ValueError naming what was looked for."""
    ucf = _ucf_files(root, split)
    hmdb = _hmdb_files(root, split) if ucf is None else []
    if ucf is None and not hmdb:
        raise ValueError(
            f"split={split}: no official split files in {root}; looked for " + ", ".join(_looked_for(root, split))
        )
    items, classes = _discover_ucf(root, ucf) if ucf else _discover_hmdb(root, hmdb, split)
    if not items:
        raise ValueError(f"split={split}: the split files in {root} list no videos")
    _warn_missing(items, f"the split {split} files of {root}")
    return _assign_keys(items), classes


# --------------------------------------------------------------------------- entry point


def discover(
    input_path: str, *, split: int | None = None, default_split: str = "train"
) -> tuple[list[VideoRef], dict[str, int]]:
    """The input's videos as VideoRefs sorted by key, and the label map {label: id}.

    input_path: a folder per class, a .csv/.parquet list, or a UCF101/HMDB51 root.
    split: 1..3 picks the official split files of a UCF101/HMDB51 root.
    default_split: the split of videos whose input names none (folders, lists without it).
    """
    if split is not None and (isinstance(split, bool) or not isinstance(split, int) or not 1 <= split <= 3):
        raise ValueError(f"split={split!r} must be 1, 2, 3 or None")
    _check_split(default_split, "default_split")
    path = storage.location(input_path)
    if not storage.exists(path):
        raise ValueError(f"input_path={input_path!r} does not exist")
    if storage.isfile(path):
        if _suffix(path) not in LIST_SUFFIXES:
            raise ValueError(f"input_path={input_path!r} is a file but not a {' or '.join(LIST_SUFFIXES)} list")
        return _discover_list(path, default_split)
    if split is not None:
        return _discover_split(path, split)
    if _has_split_files(path):
        log.info(
            "%s has official split files; reading it as one folder per class (pass split=1..3 to use the split files)",
            path,
        )
    return _discover_folders(path, default_split)
