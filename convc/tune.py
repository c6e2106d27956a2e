"""Stage 5: tuning records (MetaSchedule) — looked up by every build."""
from __future__ import annotations

from pathlib import Path

SCHEDULES = Path(__file__).resolve().parent.parent / "schedules"


def record_dirs(info, records, batch) -> list[Path]:
    """The records directories a build uses: "auto" is schedules/<target>/ (shipped with convc)."""
    if records is None:
        return []
    items = [records] if isinstance(records, (str, Path)) else list(records)
    dirs = []
    for item in items:
        if item == "auto":
            dirs.append(SCHEDULES / info.name)
        else:
            dirs.append(Path(item))
    return [d for d in dirs if (d / "database_tuning_record.json").exists()]


def apply_records(fused, info, records, batch, report):
    dirs = record_dirs(info, records, batch)
    from .build import prim_funcs
    report.untuned = list(prim_funcs(fused))
    return fused
