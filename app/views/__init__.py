"""The workstation's panels. Each `render_*` function draws one panel from the `Workstation` state."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import streamlit as st

from integrations.errors import ClinsegInputError, ModelWeightsError

log = logging.getLogger("clinseg.app")


@st.cache_resource(show_spinner="Loading the LiteMedSAM model (once per server)...")
def get_segmenter():
    from models.registry import build_segmenter

    return build_segmenter("litemedsam")


def show_error(e: BaseException, doing: str) -> None:
    """A readable message with what to do; the trace goes to the server log only for our own bugs."""
    if isinstance(e, ClinsegInputError):
        st.error(f"Cannot {doing}: {e}", icon=":material/error:")
    elif isinstance(e, ModelWeightsError):
        st.error(f"The model cannot be loaded: {e} Reinstall clinseg (`make install`) or point "
                 "CLINSEG_CHECKPOINT_DIR at the weights.", icon=":material/error:")
    else:
        # Type only: messages of library errors can embed file paths (which may hold a patient name).
        log.error("internal error while trying to %s: %s", doing, type(e).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        st.error(f"Cannot {doing}: an internal error occurred ({type(e).__name__}: {str(e)[:300]}). "
                 "Try again; if it persists, report it with the steps that led to it.", icon=":material/error:")


@contextmanager
def guarded(doing: str):
    """Run a block; on failure show a readable error instead of a stack trace on the page."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - the page must stay usable whatever a panel raises
        # (st.rerun/st.stop raise BaseException subclasses, so they pass through)
        show_error(e, doing)
