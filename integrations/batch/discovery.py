"""Find the studies under a folder tree: DICOM image series and NIfTI files -> `StudyDescriptor`s.

Each study gets a key that stays the same across runs, machines and folder moves, so a batch can
be resumed and its results committed once:
- DICOM: StudyInstanceUID + SeriesInstanceUID (a series, not a folder, is what gets segmented);
- NIfTI: a content hash of the file (NIfTI has no UIDs; the path may change, the bytes do not).
Discovery reads headers only; a study that cannot be read at all still becomes a descriptor (when
it looks like a study) so the batch records it as failed instead of silently dropping it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from integrations.dicom_series import list_series
from integrations.errors import UnreadableFileError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class StudyDescriptor:
    """One unit of batch work. Picklable (it travels to Dask workers); no pixel data."""

    key: str  # stable identity: "dicom:<StudyUID>/<SeriesUID>" or "nifti:<sha256 prefix>"
    kind: str  # "dicom" | "nifti"
    path: str  # the NIfTI file, or the folder holding every file of the DICOM series
    series_uid: str | None = None
    study_uid: str | None = None
    n_files: int = 1
    relpath: str = ""  # path relative to the discovery root, for the summary (never logged)

    @property
    def safe_name(self) -> str:
        """A file-system-safe, patient-free folder name for this study's outputs."""
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:16]
        return f"{self.kind}-{digest}"


def _is_nifti(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in NIFTI_SUFFIXES)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name


def discover_nifti(root: str | os.PathLike) -> list[StudyDescriptor]:
    root = Path(root).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _is_nifti(p.name))
    out = []
    for p in files:
        if not _is_nifti(p.name):
            continue
        # Hash the bytes, not the path: the same scan copied elsewhere is the same study.
        digest = file_digest(p)[:32]
        out.append(StudyDescriptor(key=f"nifti:{digest}", kind="nifti", path=str(p), relpath=_relative(str(p), root.parent if root.is_file() else root)))
    return out


def discover_dicom(root: str | os.PathLike) -> list[StudyDescriptor]:
    root = Path(root).resolve()
    if root.is_file():
        return []
    out = []
    for series_uid, files in sorted(list_series(root).items()):
        if not series_uid:
            continue  # a file without SeriesInstanceUID cannot be keyed stably: viewers reject it too
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        study_uid = str(getattr(header, "StudyInstanceUID", "") or "")
        folder = os.path.commonpath([os.path.dirname(f) for f in files])
        out.append(StudyDescriptor(key=f"dicom:{study_uid}/{series_uid}", kind="dicom", path=folder,
                                   series_uid=series_uid, study_uid=study_uid or None, n_files=len(files),
                                   relpath=_relative(folder, root)))
    return out


def discover(root: str | os.PathLike) -> list[StudyDescriptor]:
    """Every DICOM series and NIfTI file under `root` (or `root` itself when it is a NIfTI file),
    sorted by key so every run sees the same order."""
    root = Path(root)
    if not root.exists():
        raise UnreadableFileError(f"{root.name or root}: no such file or folder to batch over.")
    if root.is_file() and not _is_nifti(root.name):
        raise UnreadableFileError(
            f"{root.name}: batch input must be a folder (DICOM series, NIfTI files) or a NIfTI file."
        )
    studies = discover_nifti(root) + discover_dicom(root)
    seen: dict[str, StudyDescriptor] = {}
    for s in studies:
        # Two byte-identical NIfTI copies are one study: keep the first path, segment it once.
        seen.setdefault(s.key, s)
    return sorted(seen.values(), key=lambda s: s.key)
