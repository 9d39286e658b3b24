"""Triage worklist page: the studies table with the documented priority, sort/filter, assignment,
status changes, acceptance and the audit trail; "add the open study" puts the current study and its
segmented objects on the list.

`render(ws, st=None)`; Streamlit is imported inside the functions (import-safe module).
"""
from __future__ import annotations

import os

DB_KEY = "worklist_db"


def default_db() -> str:
    from integrations.triage import default_worklist

    return default_worklist()


def _store(st, path: str):
    """One store (engine, connection pool) per database per browser session, not one per rerun."""
    from integrations.triage import TriageStore

    stores = st.session_state.setdefault("worklist_stores", {})
    if path not in stores:
        stores[path] = TriageStore(path)
    return stores[path]


def findings_of(ws) -> list[dict]:
    """The session's objects as findings: volume in mL, largest in-plane extent in mm, uncertainty."""
    import numpy as np

    vol = ws.study.volume
    out = []
    for o in getattr(ws, "objects", ()):
        m = o.label_volume(vol.shape)
        if not m.any():
            continue
        zs, ys, xs = np.nonzero(m)
        size = max((xs.max() - xs.min() + 1) * vol.spacing[0], (ys.max() - ys.min() + 1) * vol.spacing[1],
                   (zs.max() - zs.min() + 1) * vol.spacing[2] if len(set(zs.tolist())) > 1 else 0.0)
        uncs = [r.uncertainty for _, r in o.slices if r.uncertainty is not None]
        out.append({"target": o.label, "volume_ml": float(m.sum()) * vol.voxel_volume_ml, "size_mm": float(size),
                    "uncertainty": float(max(uncs)) if uncs else 0.0})
    return out


def render(ws=None, st=None) -> None:
    if st is None:
        import streamlit as st
    from integrations.triage import PRIORITY_FORMULA, SORT_KEYS, STATUSES, URGENCIES

    st.subheader("Triage worklist")
    c = st.columns([3, 2])
    db = c[0].text_input("Worklist database (file or SQLAlchemy URL)", value=st.session_state.get(DB_KEY, default_db()),
                         key="wl_db_input")
    st.session_state[DB_KEY] = db
    actor = c[1].text_input("You (for assignments and the audit trail)", value=os.environ.get("USER", ""), key="wl_actor")
    store = _store(st, db)
    st.caption(PRIORITY_FORMULA)

    if ws is not None and getattr(ws, "study", None) is not None:
        _add_open_study(st, store, ws, actor)

    f = st.columns(5)
    status = f[0].multiselect("Status", list(STATUSES), key="wl_status")
    urgency = f[1].selectbox("Urgency", ["any"] + list(URGENCIES), key="wl_urgency")
    assigned = f[2].text_input("Assigned to", key="wl_assigned")
    text = f[3].text_input("Search", key="wl_text")
    sort = f[4].selectbox("Sort by", list(SORT_KEYS), key="wl_sort")
    asc = f[4].toggle("ascending", key="wl_asc")
    studies = store.list_studies(status=status or None, urgency=None if urgency == "any" else urgency,
                                 assigned_to=assigned or None, text=text, sort=sort, descending=not asc)
    counts = store.counts()
    st.caption(" · ".join(f"{k}: {v}" for k, v in counts.items()))
    if not studies:
        st.info("No study matches. Add the open study above, or `clinseg triage add` from a batch run.")
        return
    rows = [s.as_row() for s in studies]
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_order=("priority", "status", "urgency", "assigned_to", "label", "modality", "findings",
                               "priority_explained", "study_uid", "updated_at"))
    uid = st.selectbox("Study", [s.study_uid for s in studies],
                       format_func=lambda u: next(f"{s.label or u} ({s.status}, {s.priority:.0f})" for s in studies
                                                  if s.study_uid == u), key="wl_pick")
    s = store.get(uid)
    # the version this page showed on its previous run: a click is a change made on THAT view
    seen_key = f"wl_seen_{uid}"
    seen = st.session_state.get(seen_key, s.version)
    st.session_state[seen_key] = s.version
    st.markdown(f"**Why this priority:** {s.priority_explained}")
    if s.history:
        st.markdown(f"**History:** {s.history}")
    a = st.columns(4)
    who = a[0].text_input("Assign to", value=s.assigned_to, key=f"wl_assign_{uid}")
    if a[0].button("Assign", key="wl_assign_btn", disabled=not actor.strip()):
        _guarded_write(st, store.assign, uid, who.strip(), actor=actor.strip(), expected_version=seen, seen_key=seen_key)
    new_status = a[1].selectbox("Status", list(STATUSES), index=list(STATUSES).index(s.status), key=f"wl_st_{uid}")
    if a[1].button("Set status", key="wl_status_btn", disabled=not actor.strip() or new_status == s.status):
        _guarded_write(st, store.set_status, uid, new_status, actor=actor.strip(), expected_version=seen, seen_key=seen_key)
    structs = ["(all)"] + sorted({f.structure for f in s.findings})
    which = a[2].selectbox("Accept", structs, key=f"wl_acc_{uid}")
    if a[2].button("Accept", key="wl_accept_btn", disabled=not actor.strip()):
        _guarded_write(st, store.accept, uid, actor=actor.strip(), structure=None if which == "(all)" else which,
                       expected_version=seen, seen_key=seen_key)
    new_u = a[3].selectbox("Urgency", list(URGENCIES), index=list(URGENCIES).index(s.urgency), key=f"wl_u_{uid}")
    if a[3].button("Set urgency", key="wl_urg_btn", disabled=not actor.strip() or new_u == s.urgency):
        _guarded_write(st, store.set_urgency, uid, new_u, actor=actor.strip(), expected_version=seen, seen_key=seen_key)
    if s.findings:
        st.dataframe([f.__dict__ for f in s.findings], hide_index=True, width="stretch")
    with st.expander("Audit trail", icon=":material/history:"):
        st.dataframe([{"at": e.at, "who": e.actor, "action": e.action, "detail": e.detail} for e in store.audit(uid)],
                     hide_index=True, width="stretch")
    import io

    buf = io.StringIO()
    store.export(buf, fmt="csv", status=status or None, sort=sort, descending=not asc)
    st.download_button("Export worklist (CSV)", buf.getvalue(), "worklist.csv", "text/csv", key="wl_export")


def _guarded_write(st, fn, *args, seen_key: str, **kwargs) -> None:
    """Apply a change made on what this page showed; if another session changed the study meanwhile,
    say so instead of overwriting their change (the page now shows the new state)."""
    from integrations.triage import StaleStudyError

    try:
        study = fn(*args, **kwargs)
    except StaleStudyError as e:
        st.warning(str(e))
        return
    st.session_state[seen_key] = study.version  # our own change is not someone else's
    st.rerun()


def _add_open_study(st, store, ws, actor: str) -> None:
    from integrations.triage import URGENCIES

    vol = ws.study.volume
    if vol.dicom is None:
        st.caption("The open study has no DICOM Study UID; only DICOM studies go on the worklist.")
        return
    meta = getattr(ws, "metadata", {}) or {}
    with st.expander("Add the open study to the worklist", icon=":material/playlist_add:"):
        u0 = str(meta.get("urgency", "routine")).lower()
        urgency = st.selectbox("Urgency", list(URGENCIES), index=list(URGENCIES).index(u0) if u0 in URGENCIES else 0,
                               key="wl_add_urgency")
        history = st.text_area("Clinical history", value=str(meta.get("history", "")), key="wl_add_history")
        found = findings_of(ws)
        st.caption(f"{len(found)} finding(s) from this session's objects")
        if st.button("Add / update", key="wl_add_btn", disabled=not actor.strip()):
            uid = vol.dicom.study_instance_uid
            store.add_study(uid, label=ws.study.title, modality=vol.modality, urgency=urgency, history=history,
                            actor=actor.strip())
            for fnd in found:
                store.upsert_finding(uid, fnd["target"], "workstation", structure=fnd["target"],
                                     volume_ml=fnd["volume_ml"], size_mm=fnd["size_mm"],
                                     uncertainty=min(1.0, max(0.0, fnd["uncertainty"])), actor=actor.strip())
            st.success("Added to the worklist.")
