"""RT contour review page: two contour sets side by side with the metrics table, user thresholds,
flagged structures and slices, regeneration of a structure from its contour's boxes, acceptance per
structure, and export (HTML/CSV report, RTSTRUCT, DICOM-SEG).

`render(ws, st=None)` draws the page for the workstation state `ws` (its open study is the image
series). Streamlit is imported inside the functions so importing this module costs nothing.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

STATE_KEY = "rt_review"
WORKSTATION = "Workstation objects (this session)"


def _ws_masks(ws) -> dict:
    """The session's segmented objects as a contour set (name -> (z, y, x) bool)."""
    vol = ws.study.volume
    return {o.label: o.label_volume(vol.shape) for o in getattr(ws, "objects", ()) if o.slices or
            o.volume_mask is not None}


def _thresholds(st):
    from integrations.contour_review import ReviewThresholds

    with st.expander("Flag thresholds", expanded=False, icon=":material/tune:"):
        c = st.columns(4)
        min_dice = c[0].number_input("min Dice", 0.0, 1.0, 0.80, 0.05, key="rt_min_dice")
        max_hd = c[1].number_input("max HD95 (mm)", 0.0, 100.0, 5.0, 0.5, key="rt_max_hd95")
        max_msd = c[2].number_input("max MSD (mm)", 0.0, 50.0, 2.0, 0.5, key="rt_max_msd")
        min_sd = c[3].number_input("min surface Dice", 0.0, 1.0, 0.80, 0.05, key="rt_min_sd")
        c = st.columns(4)
        tol = c[0].number_input("tolerance (mm)", 0.0, 20.0, 2.0, 0.5, key="rt_tol")
        max_dv = c[1].number_input("max |volume diff| (%)", 0.0, 500.0, 10.0, 1.0, key="rt_max_dv")
        sl_dice = c[2].number_input("slice: min Dice", 0.0, 1.0, 0.70, 0.05, key="rt_sl_dice")
        sl_hd = c[3].number_input("slice: max HD95 (mm)", 0.0, 100.0, 5.0, 0.5, key="rt_sl_hd")
    return ReviewThresholds(min_dice=min_dice, max_hd95_mm=max_hd, max_msd_mm=max_msd, min_surface_dice=min_sd,
                            max_volume_diff_pct=max_dv, slice_min_dice=sl_dice, slice_max_hd95_mm=sl_hd,
                            tolerance_mm=tol)


def load_review(volume, path_a: str, source_b: str, ws=None, thresholds=None):
    """Build a ContourReview: A is an RTSTRUCT path, B an RTSTRUCT path or the workstation objects."""
    from integrations.contour_review import ContourReview, ReviewThresholds
    from integrations.rtstruct import read_rtstruct

    ra = read_rtstruct(path_a, volume)
    notes = [f"A: {n} contour(s) on slices missing from this series" for n in [len(ra.missing_slices)] if n]
    if source_b == WORKSTATION:
        b = _ws_masks(ws)
        label_b = "session"
    else:
        rb = read_rtstruct(source_b, volume)
        b = rb.masks
        label_b = "B"
        if rb.missing_slices:
            notes.append(f"B: {len(rb.missing_slices)} contour(s) on slices missing from this series")
    rv = ContourReview(volume, ra.masks, b, thresholds or ReviewThresholds(), reference_label="A", test_label=label_b)
    return rv, notes, ra.colors


def render(ws, st=None) -> None:
    if st is None:
        import streamlit as st
    from integrations.contour_review import finite

    st.subheader("RT contour review")
    if ws is None or getattr(ws, "study", None) is None:
        st.info("Open the CT/MR series the structure sets were drawn on (sidebar), then load them here.")
        return
    vol = ws.study.volume
    if vol.dicom is None:
        st.warning("This study was not loaded from DICOM: RTSTRUCTs are placed by patient coordinates and "
                   "cannot be exported against it. Open the DICOM series to review RT contours.")
    c1, c2 = st.columns(2)
    path_a = c1.text_input("RTSTRUCT A (reference, e.g. clinical)", key="rt_path_a")
    choice_b = c2.radio("Compare with", ["RTSTRUCT file", WORKSTATION], horizontal=True, key="rt_b_kind")
    path_b = c2.text_input("RTSTRUCT B", key="rt_path_b") if choice_b == "RTSTRUCT file" else WORKSTATION
    th = _thresholds(st)
    state = st.session_state.get(STATE_KEY)
    if st.button("Load and compare", type="primary", disabled=not path_a or not path_b, key="rt_load"):
        rv, notes, colors = load_review(vol, path_a.strip(), path_b.strip() if path_b != WORKSTATION else path_b, ws, th)
        state = st.session_state[STATE_KEY] = {"review": rv, "notes": notes, "colors": colors}
    if not state:
        st.caption("Load two contour sets to compare them per structure and per slice.")
        return
    rv = state["review"]
    rv.thresholds = th
    for n in state["notes"]:
        st.warning(n)
    cmp_ = rv.compare()
    rows = cmp_.table()
    if not rows:
        st.info("No structure has contours on this series' slices.")
        return
    for r in rows:
        d = rv.decisions.get(r["structure"])
        r["decision"] = f"{d.choice} ({d.actor})" if d else ""
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = finite(v)
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_order=("structure", "flagged", "dice", "hd95_mm", "msd_mm", "surface_dice", "apl_mm",
                               "volume_diff_pct", "flags", "flagged_slices", "decision"))
    flagged = cmp_.flagged()
    st.caption(f"{len(flagged)} of {len(rows)} structure(s) flagged. Definitions: docs/rt.md (HD95 = larger "
               "directed 95th percentile; MSD = mean of pooled boundary distances; APL in mm at the tolerance).")
    names = list(cmp_.reviews)
    name = st.selectbox("Structure", names, index=names.index(flagged[0]) if flagged else 0, key="rt_structure")
    rev = cmp_.reviews[name]
    zs = [s.z for s in rev.slices]
    default_z = rev.flagged_slices[0] if rev.flagged_slices else zs[len(zs) // 2]
    z = st.select_slider("Slice", options=zs, value=default_z, key=f"rt_z_{name}") if len(zs) > 1 else zs[0]
    _show_slice(st, rv, cmp_, name, z)

    c = st.columns([2, 2, 3])
    regen_flagged_only = c[0].checkbox("only flagged slices", value=bool(rev.flagged_slices), key="rt_regen_flagged")
    if c[0].button("Regenerate from contour boxes", key="rt_regen", icon=":material/auto_fix_high:"):
        from app.views import get_segmenter

        with st.spinner("Segmenting from the boxes of the reference contour..."):
            rv.regenerate(name, get_segmenter(), source="reference" if rev.presence != "test only" else "test",
                          slices=rev.flagged_slices if regen_flagged_only and rev.flagged_slices else None)
        st.rerun()
    options = ["reference", "test"] + (["regenerated"] if name in rv.regenerated else [])
    pick = c[1].radio("Accept", options, horizontal=False, key=f"rt_pick_{name}",
                      format_func=lambda o: {"reference": "A", "test": rv.test_label}.get(o, o))
    actor = c[1].text_input("Reviewer", value=os.environ.get("USER", ""), key="rt_actor")
    if c[1].button("Accept structure", key="rt_accept", disabled=not actor.strip()):
        d = rv.accept(name, pick, actor.strip())
        _record_on_worklist(st, rv, d)
        st.rerun()
    with c[2]:
        _export(st, rv, cmp_, state.get("colors", {}), path_a)


def _record_on_worklist(st, rv, decision) -> None:
    """If the study is on the triage worklist, the decision goes into its audit trail too."""
    from app.views.worklist import DB_KEY, _store, default_db
    from integrations.triage import TriageError

    if rv.volume.dicom is None:
        return
    try:
        store = _store(st, st.session_state.get(DB_KEY, default_db()))
        store.record_edit(rv.volume.dicom.study_instance_uid, actor=decision.actor, structure=decision.structure,
                          review="rt contour review", accepted=decision.choice)
    except TriageError:
        pass  # not on the worklist: the review's own decisions and report are the record


def _show_slice(st, rv, cmp_, name: str, z: int) -> None:
    from integrations.contour_review import _match_names
    from integrations.review_report import render_side_by_side
    from integrations.windowing import slice_image, volume_window

    keys = {d: (rk, tk) for d, rk, tk in _match_names(rv.reference, rv.test, rv.name_map)}
    rk, tk = keys[name]
    panels = [("A", rv.reference[rk][z] if rk else None), (rv.test_label, rv.test[tk][z] if tk else None)]
    if name in rv.regenerated:
        panels.append(("regenerated", rv.regenerated[name][z]))
    vol = rv.volume
    img = slice_image(vol, z, volume_window(vol, None))
    png = render_side_by_side(img, panels, title=f"{name}, slice {z}", aspect=vol.spacing[1] / vol.spacing[0])
    st.image(png, width="stretch")
    sm = next((s for s in cmp_.reviews[name].slices if s.z == z), None)
    if sm is not None:
        st.caption(f"slice {z}: Dice {sm.dice:.3f}, HD95 {sm.hd95:.2f} mm, MSD {sm.msd:.2f} mm, "
                   f"surface Dice {sm.surface_dice:.3f}, APL {sm.apl_mm:.1f} mm")


def _export(st, rv, cmp_, colors: dict, path_a: str) -> None:
    from integrations.review_report import write_review_report

    st.markdown("**Export**")
    out = Path(tempfile.gettempdir()) / "clinseg_rt_review" / str(id(rv))  # one folder per review, reused
    if st.button("Build review report", key="rt_report", icon=":material/description:"):
        files = write_review_report(out, rv.volume, cmp_, rv.reference, rv.test, rv.regenerated, rv.decisions,
                                    study_label="RT review")
        st.download_button("report.html", files.html.read_bytes(), "report.html", "text/html", key="rt_dl_html")
        st.download_button("structures.csv", files.structures_csv.read_bytes(), "structures.csv", "text/csv",
                           key="rt_dl_csv")
        st.download_button("slices.csv", files.slices_csv.read_bytes(), "slices.csv", "text/csv", key="rt_dl_slices")
    accepted = rv.accepted_masks()
    if not accepted:
        st.caption("Accept structures to export them as RTSTRUCT / DICOM-SEG.")
        return
    if rv.volume.dicom is None:
        return
    if st.button(f"RTSTRUCT with {len(accepted)} accepted structure(s)", key="rt_write_rs"):
        from integrations.rtstruct import write_rtstruct

        out.mkdir(parents=True, exist_ok=True)
        p = out / "rtstruct_reviewed.dcm"
        write_rtstruct(p, rv.volume, accepted, colors=colors, base=path_a or None, label="reviewed",
                       series_description="clinseg reviewed contours")
        st.download_button("rtstruct_reviewed.dcm", p.read_bytes(), p.name, "application/dicom", key="rt_dl_rs")
    if st.button("DICOM-SEG of accepted structures", key="rt_write_seg"):
        from integrations.dicom_seg import write_seg

        out.mkdir(parents=True, exist_ok=True)
        p = out / "seg_reviewed.dcm"
        write_seg(p, rv.volume, accepted, colors=colors)
        st.download_button("seg_reviewed.dcm", p.read_bytes(), p.name, "application/dicom", key="rt_dl_seg")
