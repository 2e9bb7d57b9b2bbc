"""The ImageNet validation set as it is distributed: one flat folder of 50,000 files plus a label file.

``read_val_entries(list_file, image_root, classes)`` reads the val source from a label file instead of
``val/<class>/`` folders. Two forms are accepted (told apart by the first non-comment line):

- Text lines ``<file> <class name>`` (whitespace-separated; ``#`` starts a comment), e.g.
  ``ILSVRC2012_val_00000001.JPEG n01751748``. The class name is a wnid, i.e. a class folder name of the
  training split.
- Kaggle's ``LOC_val_solution.csv``: a header ``ImageId,PredictionString`` and rows
  ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...``; the class is the first token of the
  PredictionString, the file ``<ImageId>.JPEG``.

Relative file names are looked up under ``image_root`` (the trainer and ``python -m fastssl.eval`` pass
``<data>/val``, or the list file's own folder when there is no ``<data>/val``). Labels are indices into
``classes``, the training split's class list (sorted class folder names, fastssl.data.folders), so a val
label means the same class as in training.

Refused, as one-line ``DataError`` naming the file and line: a missing list file, a line that is not one
of the forms, a class that is not a training class, a file listed twice, files that do not exist, an
empty list. The devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one number per line) is refused with
the reason: its numbers are ILSVRC2012_IDs in the devkit's meta.mat order, not positions in the sorted
wnid list, and the file names no images; convert it to ``<file> <wnid>`` lines (docs/imagenet.md "Training on
ImageNet") or use Kaggle's LOC_val_solution.csv. Integer labels (``<file> <int>``, e.g. Caffe's val.txt)
are refused too: whether an integer means a sorted-wnid index or an ILSVRC2012_ID cannot be told from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastssl.base.errors import DataError

KAGGLE_HEADER = "ImageId,PredictionString"
FORMS = ("'<file> <wnid>' lines, or Kaggle's LOC_val_solution.csv (ImageId,PredictionString)")


def _entries(lf: Path) -> list[tuple[int, str, str]]:
    """(line number, file name, class name) of every entry of the list file."""
    try:
        lines = lf.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark (Excel's CSV) is not data
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--val-list {lf}: cannot read it ({e})") from None
    body = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(lines, 1)]
    body = [(n, t) for n, t in body if t]
    if not body:
        raise DataError(f"--val-list {lf}: the list is empty")
    out = []
    if body[0][1].replace(" ", "").startswith(KAGGLE_HEADER):
        for n, text in body[1:]:
            image_id, sep, pred = text.partition(",")
            tokens = pred.split()
            if not sep or not image_id.strip() or not tokens:
                raise DataError(f"--val-list {lf}:{n}: expected 'ImageId,PredictionString' (e.g. "
                                f"ILSVRC2012_val_00008726,n02119789 255 142 454 329), got {text!r}")
            name = image_id.strip()
            out.append((n, name if Path(name).suffix else name + ".JPEG", tokens[0]))
        return out
    first = body[0][1].split()
    if len(first) == 1 and first[0].isdigit():
        raise DataError(f"--val-list {lf}: one number per line looks like the devkit's "
                        "ILSVRC2012_validation_ground_truth.txt, whose numbers are ILSVRC2012_IDs in meta.mat "
                        f"order (not class indices) and which names no files; accepted forms: {FORMS}")
    for n, text in body:
        parts = text.split()
        if len(parts) != 2:
            raise DataError(f"--val-list {lf}:{n}: expected '<file> <wnid>', got {text!r} (accepted forms: {FORMS})")
        if parts[1].lstrip("-").isdigit():
            raise DataError(f"--val-list {lf}:{n}: integer label {parts[1]!r}: labels must be class names (the "
                            "wnid folder names of the training split); an integer could be a sorted-wnid index "
                            f"or an ILSVRC2012_ID. Accepted forms: {FORMS}")
        out.append((n, parts[0], parts[1]))
    return out


def read_val_entries(list_file: str | os.PathLike, image_root: str | os.PathLike | None,
                     classes: list[str]) -> tuple[Path, list[str], list[int]]:
    """(image root, files, labels) of the val split named by ``list_file`` (module docstring): labels index
    ``classes``, files in list order. ``image_root``: where relative names are (None: the list file's
    folder). Raises ``DataError`` (one line) for every refusal listed in the module docstring. The source
    is built by ``fastssl.data.folders.read_val_list``."""
    lf = Path(list_file).expanduser()
    if lf.is_dir():
        raise DataError(f"--val-list {lf} is a folder; give the label file ({FORMS})")
    if not lf.is_file():
        raise DataError(f"--val-list: file not found: {lf}")
    root = Path(image_root).expanduser() if image_root is not None else lf.resolve().parent
    index = {c: i for i, c in enumerate(classes)}
    files, labels, line_of = [], [], {}
    for n, name, cls in _entries(lf):
        if cls not in index:
            shown = ", ".join(list(classes)[:3])
            raise DataError(f"--val-list {lf}:{n}: class {cls!r} is not a class of the training split "
                            f"({len(classes)} classes: {shown}, ...)")
        full = os.path.normpath(str(root / name))
        if full in line_of:
            raise DataError(f"--val-list {lf}:{n}: {name} is already listed on line {line_of[full]}")
        line_of[full] = n
        files.append(full)
        labels.append(index[cls])
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(f"--val-list {lf}: {len(missing)} listed file(s) do not exist under {root}, e.g. "
                        f"{missing[0]} (line {line_of[missing[0]]})")
    return root, files, labels
