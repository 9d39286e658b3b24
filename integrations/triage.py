"""The triage worklist: studies, their segmentation findings, clinical metadata, a documented priority
score, assignment and an audit trail, persisted through SQLAlchemy 2.

Storage: SQLite by default (one file, WAL journal, `BEGIN IMMEDIATE` write transactions, a busy
timeout), so several app sessions and batch workers can write at once without losing anything and a
writer killed mid-transaction leaves the previous committed state. Nothing here is SQLite-specific
beyond those connection settings: give a `postgresql+psycopg://...` URL and the same code runs
(upserts retry on the unique-key race that PostgreSQL reports as an IntegrityError).

Priority (shown to users with `PRIORITY_FORMULA` and, per study, `Study.priority_explained`):
    priority = 40 x urgency + 30 x uncertainty + 30 x size           (0..100)
    urgency     : routine 0, soon 1/3, urgent 2/3, emergency 1 (the referral's urgency)
    uncertainty : the largest uncertainty (0..1) over the study's findings
    size        : the largest finding's size in mm / 50 mm, capped at 1 ("large lesion")
i.e. "high uncertainty + large lesion + urgent referral" each push a study up the list; a study with
no findings scores on urgency alone.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from sqlalchemy import (CheckConstraint, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, func, select)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .errors import ClinsegInputError

STATUSES = ("new", "auto-processed", "needs review", "reviewed")
URGENCIES = {"routine": 0.0, "soon": 1 / 3, "urgent": 2 / 3, "emergency": 1.0}
W_URGENCY, W_UNCERTAINTY, W_SIZE = 40.0, 30.0, 30.0
SIZE_FULL_MM = 50.0
REVIEW_UNCERTAINTY = 0.3  # a finding at least this uncertain sends its study to "needs review"
PRIORITY_FORMULA = (
    f"priority = {W_URGENCY:g} x urgency (routine 0, soon 0.33, urgent 0.67, emergency 1) "
    f"+ {W_UNCERTAINTY:g} x uncertainty (largest over findings, 0-1) "
    f"+ {W_SIZE:g} x size (largest finding / {SIZE_FULL_MM:g} mm, capped at 1)"
)
SORT_KEYS = ("priority", "updated", "created", "urgency", "status", "study_uid")


class TriageError(ClinsegInputError):
    """A worklist request that cannot be carried out (unknown study, bad status or urgency)."""


class StaleStudyError(TriageError):
    """The study changed since the caller read it (another session edited it): reload and retry."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


# ----------------------------------------------------------------------------------------- schema
class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    label: Mapped[str] = mapped_column(String(128), default="")  # accession or pseudonym, never a name
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(20), default="new", index=True)
    urgency: Mapped[str] = mapped_column(String(16), default="routine")
    history: Mapped[str] = mapped_column(Text, default="")
    assigned_to: Mapped[str] = mapped_column(String(64), default="", index=True)
    priority: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped on every change
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    findings: Mapped[list["FindingRow"]] = relationship(back_populates="study", cascade="all, delete-orphan")
    __table_args__ = (
        CheckConstraint("status IN ('new', 'auto-processed', 'needs review', 'reviewed')", name="ck_status"),
        CheckConstraint("urgency IN ('routine', 'soon', 'urgent', 'emergency')", name="ck_urgency"),
    )


class FindingRow(Base):
    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(256))  # what was asked for (query / structure key [| series])
    model_version: Mapped[str] = mapped_column(String(64))
    structure: Mapped[str] = mapped_column(String(128), default="")  # display name
    volume_ml: Mapped[float] = mapped_column(Float, default=0.0)
    size_mm: Mapped[float] = mapped_column(Float, default=0.0)
    uncertainty: Mapped[float] = mapped_column(Float, default=0.0)
    accepted_by: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[str] = mapped_column(String(40))
    study: Mapped[StudyRow] = relationship(back_populates="findings")
    __table_args__ = (UniqueConstraint("study_id", "target", "model_version", name="uq_finding_key"),)


class AuditRow(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON


# ----------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Finding:
    target: str
    model_version: str
    structure: str
    volume_ml: float
    size_mm: float
    uncertainty: float
    accepted_by: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class Study:
    study_uid: str
    label: str
    modality: str
    description: str
    status: str
    urgency: str
    history: str
    assigned_to: str
    priority: float
    priority_explained: str
    version: int
    created_at: str
    updated_at: str
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    def as_row(self) -> dict:
        d = asdict(self)
        fs = d.pop("findings")
        d["findings"] = "; ".join(f"{f['structure']} {f['volume_ml']:.1f} mL {f['size_mm']:.0f} mm "
                                  f"u={f['uncertainty']:.2f}" for f in fs)
        return d


@dataclass(frozen=True)
class AuditEntry:
    study_uid: str
    at: str
    actor: str
    action: str
    detail: dict


def priority_parts(urgency: str, findings) -> list[tuple[str, float]]:
    """[(human-readable reason, points)] of the documented formula."""
    u = URGENCIES[urgency]
    unc = max((f.uncertainty for f in findings), default=0.0)
    size = max((f.size_mm for f in findings), default=0.0)
    s = min(1.0, size / SIZE_FULL_MM)
    parts = [(f"{urgency} referral", W_URGENCY * u)]
    if findings:
        unc_word = "high" if unc >= 0.5 else "moderate" if unc >= REVIEW_UNCERTAINTY else "low"
        size_word = "large" if s >= 0.6 else "medium" if s >= 0.2 else "small"
        parts.append((f"{unc_word} uncertainty {unc:.2f}", W_UNCERTAINTY * max(0.0, min(1.0, unc))))
        parts.append((f"{size_word} lesion {size:.0f} mm", W_SIZE * s))
    return parts


def priority_of(urgency: str, findings) -> tuple[float, str]:
    parts = priority_parts(urgency, findings)
    total = sum(p for _, p in parts)
    text = " + ".join(f"{why} ({p:.1f})" for why, p in parts) + f" = {total:.1f}"
    return round(total, 3), text


# ----------------------------------------------------------------------------------------- store
def default_worklist() -> str:
    """$CLINSEG_WORKLIST (a file or a database URL), else ~/.clinseg/worklist.db."""
    return os.environ.get("CLINSEG_WORKLIST") or os.path.join(os.path.expanduser("~"), ".clinseg", "worklist.db")


def _sqlite_url(path_or_url: str | os.PathLike) -> str:
    s = os.fspath(path_or_url)
    if "://" in s:
        return s
    p = os.path.abspath(s)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return f"sqlite:///{p}"


class TriageStore:
    """The worklist. Every public method is one transaction; reads return plain dataclasses."""

    def __init__(self, path_or_url: str | os.PathLike | None = None, busy_timeout_s: float = 30.0,
                 retries: int = 5):
        self.url = _sqlite_url(path_or_url if path_or_url is not None else default_worklist())
        self.retries = retries
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(self.url, connect_args={"timeout": busy_timeout_s})
            ms = int(busy_timeout_s * 1000)

            @event.listens_for(self.engine, "connect")
            def _on_connect(dbapi_conn, _rec):
                # the driver's own transaction handling is switched off so that SQLAlchemy's "begin"
                # below can open every transaction as BEGIN IMMEDIATE: the write lock is taken at the
                # start, so two writers queue instead of failing on a read->write lock upgrade
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA busy_timeout={ms}")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _on_begin(conn):
                # reads take no write lock (WAL readers see the last committed state meanwhile)
                conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("clinseg_read") else "BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(clinseg_read=True), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self):
        """One atomic unit of work: commits on success, rolls back on any error (or a killed process)."""
        with self._sessions() as s:
            with s.begin():
                yield s

    def _run(self, fn):
        """Run fn(session) in a transaction, retrying the races a second writer can cause."""
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                with self.transaction() as s:
                    return fn(s)
            except (IntegrityError, OperationalError) as e:
                transient = isinstance(e, IntegrityError) or "locked" in str(e).lower() or "busy" in str(e).lower()
                if not transient or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2

    @staticmethod
    def _audit(s: Session, study_uid: str, actor: str, action: str, **detail) -> None:
        s.add(AuditRow(study_uid=study_uid, at=_now(), actor=actor or "unknown", action=action,
                       detail=json.dumps(detail, sort_keys=True, default=str)))

    @staticmethod
    def _get(s: Session, study_uid: str, expected_version: int | None = None) -> StudyRow:
        row = s.scalar(select(StudyRow).where(StudyRow.study_uid == study_uid))
        if row is None:
            raise TriageError(f"study {study_uid} is not on the worklist; add it first (clinseg triage add)")
        # optimistic check for interactive sessions: the write lock is held, so the comparison and
        # the change that follows are atomic
        if expected_version is not None and row.version != expected_version:
            raise StaleStudyError(f"study {row.label or study_uid} was changed by someone else since you opened it "
                                  f"(version {expected_version} -> {row.version}); reload the worklist and try again")
        return row

    @staticmethod
    def _touch(row: StudyRow) -> None:
        row.priority, _ = priority_of(row.urgency, row.findings)
        row.version = (row.version or 0) + 1
        row.updated_at = _now()

    @staticmethod
    def _check_urgency(urgency: str) -> str:
        u = (urgency or "routine").strip().lower()
        if u not in URGENCIES:
            raise TriageError(f"urgency {urgency!r} is not one of {', '.join(URGENCIES)}")
        return u

    # ------------------------------------------------------------------ writes
    def add_study(self, study_uid: str, *, label: str = "", modality: str = "", description: str = "",
                  urgency: str = "routine", history: str = "", actor: str = "system") -> Study:
        """Put a study on the worklist, or update its clinical metadata if it is already there."""
        if not study_uid or len(study_uid) > 64:
            raise TriageError("a study needs its Study Instance UID (1-64 characters)")
        urgency = self._check_urgency(urgency)

        def fn(s: Session):
            row = s.scalar(select(StudyRow).where(StudyRow.study_uid == study_uid))
            if row is None:
                now = _now()
                row = StudyRow(study_uid=study_uid, label=label, modality=modality, description=description,
                               urgency=urgency, history=history, status="new", assigned_to="", version=0,
                               created_at=now, updated_at=now)
                row.findings = []
                s.add(row)
                self._audit(s, study_uid, actor, "added", urgency=urgency)
            else:
                changed = {k: v for k, v in dict(label=label, modality=modality, description=description,
                                                 urgency=urgency, history=history).items()
                           if v and getattr(row, k) != v}
                for k, v in changed.items():
                    setattr(row, k, v)
                if not changed:
                    return self._view(row)
                self._audit(s, study_uid, actor, "metadata", **{k: v for k, v in changed.items() if k != "history"})
            self._touch(row)
            s.flush()
            return self._view(row)

        return self._run(fn)

    def upsert_finding(self, study_uid: str, target: str, model_version: str, *, structure: str = "",
                       volume_ml: float = 0.0, size_mm: float = 0.0, uncertainty: float = 0.0,
                       actor: str = "system") -> tuple[Finding, bool]:
        """Insert or update the finding keyed by (study, target, model version); returns (finding,
        created). Re-running a batch with the same model version overwrites, never duplicates."""
        vals = dict(volume_ml=float(volume_ml), size_mm=float(size_mm), uncertainty=float(uncertainty))
        for k, v in vals.items():
            if not (v == v) or v < 0 or (k == "uncertainty" and v > 1):
                raise TriageError(f"finding {k}={v} is out of range (volumes/sizes >= 0, uncertainty 0..1)")

        def fn(s: Session):
            row = self._get(s, study_uid)
            f = s.scalar(select(FindingRow).where(FindingRow.study_id == row.id, FindingRow.target == target,
                                                  FindingRow.model_version == model_version))
            created = f is None
            if created:
                f = FindingRow(study_id=row.id, target=target, model_version=model_version,
                               structure=structure or target, updated_at=_now(), **vals)
                row.findings.append(f)
            else:
                if all(getattr(f, k) == v for k, v in vals.items()) and structure in ("", f.structure):
                    return self._finding(f), False  # a re-run with identical values changes nothing
                if structure:
                    f.structure = structure
                for k, v in vals.items():
                    setattr(f, k, v)
                f.updated_at = _now()
            if row.status == "new":
                row.status = "auto-processed"
            if vals["uncertainty"] >= REVIEW_UNCERTAINTY and row.status == "auto-processed":
                row.status = "needs review"
            self._audit(s, study_uid, actor, "finding" if created else "finding-update", target=target,
                        model_version=model_version, **vals)
            self._touch(row)
            s.flush()
            return self._finding(f), created

        return self._run(fn)

    def set_status(self, study_uid: str, status: str, *, actor: str, note: str = "",
                   expected_version: int | None = None) -> Study:
        if status not in STATUSES:
            raise TriageError(f"status {status!r} is not one of {', '.join(STATUSES)}")

        def fn(s: Session):
            row = self._get(s, study_uid, expected_version)
            old = row.status
            row.status = status
            self._audit(s, study_uid, actor, "status", old=old, new=status, note=note)
            self._touch(row)
            return self._view(row)

        return self._run(fn)

    def assign(self, study_uid: str, user: str, *, actor: str, expected_version: int | None = None) -> Study:
        """expected_version: the `Study.version` the caller saw; a newer one raises StaleStudyError."""

        def fn(s: Session):
            row = self._get(s, study_uid, expected_version)
            old = row.assigned_to
            row.assigned_to = user or ""
            self._audit(s, study_uid, actor, "assign", old=old, new=row.assigned_to)
            self._touch(row)
            return self._view(row)

        return self._run(fn)

    def set_urgency(self, study_uid: str, urgency: str, *, actor: str, expected_version: int | None = None) -> Study:
        urgency = self._check_urgency(urgency)

        def fn(s: Session):
            row = self._get(s, study_uid, expected_version)
            old = row.urgency
            row.urgency = urgency
            self._audit(s, study_uid, actor, "urgency", old=old, new=urgency)
            self._touch(row)
            return self._view(row)

        return self._run(fn)

    def accept(self, study_uid: str, *, actor: str, structure: str | None = None,
               expected_version: int | None = None) -> Study:
        """A reviewer accepts one structure's finding(s), or the whole study (status -> reviewed)."""

        def fn(s: Session):
            row = self._get(s, study_uid, expected_version)
            hit = [f for f in row.findings if structure is None or structure in (f.structure, f.target)]
            if structure is not None and not hit:
                raise TriageError(f"study {study_uid} has no finding for {structure!r}")
            for f in hit:
                f.accepted_by = actor
                f.updated_at = _now()
            if structure is None or all(f.accepted_by for f in row.findings):
                old = row.status
                row.status = "reviewed"
                if old != "reviewed":
                    self._audit(s, study_uid, actor, "status", old=old, new="reviewed", note="accepted")
            self._audit(s, study_uid, actor, "accept", structure=structure or "*")
            self._touch(row)
            return self._view(row)

        return self._run(fn)

    def record_edit(self, study_uid: str, *, actor: str, structure: str, **detail) -> None:
        """Log that a user edited a structure (e.g. regenerated or redrew a contour)."""

        def fn(s: Session):
            row = self._get(s, study_uid)
            self._audit(s, study_uid, actor, "edit", structure=structure, **detail)
            self._touch(row)

        self._run(fn)

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _finding(f: FindingRow) -> Finding:
        return Finding(f.target, f.model_version, f.structure, f.volume_ml, f.size_mm, f.uncertainty,
                       f.accepted_by, f.updated_at)

    def _view(self, row: StudyRow) -> Study:
        pr, text = priority_of(row.urgency, row.findings)
        return Study(row.study_uid, row.label, row.modality, row.description, row.status, row.urgency, row.history,
                     row.assigned_to, pr, text, row.version, row.created_at, row.updated_at,
                     tuple(self._finding(f) for f in sorted(row.findings, key=lambda f: (f.structure, f.model_version))))

    def get(self, study_uid: str) -> Study:
        with self._reads() as s:
            return self._view(self._get(s, study_uid))

    def list_studies(self, *, status: str | list[str] | None = None, assigned_to: str | None = None,
                     urgency: str | None = None, min_priority: float | None = None, text: str = "",
                     sort: str = "priority", descending: bool = True, limit: int | None = None) -> list[Study]:
        """Filter and sort in SQL (works on large lists); `text` matches label/description/history."""
        if sort not in SORT_KEYS:
            raise TriageError(f"sort key {sort!r} is not one of {', '.join(SORT_KEYS)}")
        q = select(StudyRow)
        if status:
            sts = [status] if isinstance(status, str) else list(status)
            bad = [x for x in sts if x not in STATUSES]
            if bad:
                raise TriageError(f"status {bad[0]!r} is not one of {', '.join(STATUSES)}")
            q = q.where(StudyRow.status.in_(sts))
        if assigned_to is not None:
            q = q.where(StudyRow.assigned_to == assigned_to)
        if urgency:
            q = q.where(StudyRow.urgency == self._check_urgency(urgency))
        if min_priority is not None:
            q = q.where(StudyRow.priority >= float(min_priority))
        if text:
            like = f"%{text.lower()}%"
            q = q.where(func.lower(StudyRow.label).like(like) | func.lower(StudyRow.description).like(like)
                        | func.lower(StudyRow.history).like(like))
        col = {"priority": StudyRow.priority, "updated": StudyRow.updated_at, "created": StudyRow.created_at,
               "status": StudyRow.status, "study_uid": StudyRow.study_uid, "urgency": StudyRow.priority}[sort]
        if sort == "urgency":
            from sqlalchemy import case

            col = case({k: v for k, v in URGENCIES.items()}, value=StudyRow.urgency)
        q = q.order_by(col.desc() if descending else col.asc(), StudyRow.id.asc())
        if limit:
            q = q.limit(int(limit))
        with self._reads() as s:
            return [self._view(r) for r in s.scalars(q).all()]

    def audit(self, study_uid: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        q = select(AuditRow).order_by(AuditRow.id.asc())
        if study_uid:
            q = q.where(AuditRow.study_uid == study_uid)
        if limit:
            q = q.limit(int(limit))
        with self._reads() as s:
            return [AuditEntry(a.study_uid, a.at, a.actor, a.action, json.loads(a.detail or "{}"))
                    for a in s.scalars(q).all()]

    def counts(self) -> dict[str, int]:
        with self._reads() as s:
            rows = s.execute(select(StudyRow.status, func.count()).group_by(StudyRow.status)).all()
        out = {k: 0 for k in STATUSES}
        out.update({k: int(n) for k, n in rows})
        return out

    def export(self, path_or_file, fmt: str | None = None, **filters) -> int:
        """Write the (filtered, sorted) worklist as CSV or JSON; returns the number of studies."""
        studies = self.list_studies(**filters)
        fmt = fmt or ("json" if str(path_or_file).lower().endswith(".json") else "csv")
        if fmt == "json":
            text = json.dumps([asdict(x) for x in studies], indent=1)
        elif fmt == "csv":
            buf = io.StringIO()
            cols = list(Study.__dataclass_fields__)
            w = csv.DictWriter(buf, fieldnames=cols)
            w.writeheader()
            for x in studies:
                w.writerow(x.as_row())
            text = buf.getvalue()
        else:
            raise TriageError(f"export format {fmt!r} is not csv or json")
        if hasattr(path_or_file, "write"):
            path_or_file.write(text)
        else:
            with open(path_or_file, "w", newline="", encoding="utf-8") as fh:
                fh.write(text)
        return len(studies)

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check plus referential checks (no orphan findings)."""
        with self.engine.connect() as c:
            if self.is_sqlite:
                if c.exec_driver_sql("PRAGMA integrity_check").scalar() != "ok":
                    return False
                if c.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    return False
            orphans = c.execute(select(func.count()).select_from(FindingRow)
                                .where(~FindingRow.study_id.in_(select(StudyRow.id)))).scalar()
        return orphans == 0
