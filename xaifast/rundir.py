"""Run folders of a work dir: `<work_dir>/<YYYYmmdd_HHMMSS>[_n]`, `<work_dir>/.latest` pointing at
the newest (from the run's start), and finding the run a `--resume` continues."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Union

from .errors import XaifastError

SETTINGS_FILE = "run.json"  # <run>/explain/run.json: the settings a resumed run must match


def new_run_dir(work_dir: Path) -> Path:
    """A fresh run folder <work_dir>/<YYYYmmdd_HHMMSS>[_n]: never an earlier run's."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    run, n = work_dir / stamp, 1
    while True:
        try:
            run.mkdir()
            return run
        except FileExistsError:
            run, n = work_dir / f"{stamp}_{n}", n + 1


def point_latest(work_dir: Path, run_dir: Path) -> None:
    """<work_dir>/.latest -> the run (a relative symlink, swapped in atomically; a text file where
    links are not possible)."""
    work_dir = Path(work_dir)
    latest = work_dir / ".latest"
    tmp = work_dir / f".latest.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path(run_dir).name, tmp, target_is_directory=True)
        if latest.is_dir() and not latest.is_symlink():
            raise OSError(".latest is a real folder")
        os.replace(tmp, latest)
    except OSError:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        if latest.is_symlink() or latest.is_file():
            latest.unlink()
        latest.write_text(Path(run_dir).name + "\n")


def latest_run(work_dir: Path) -> Optional[Path]:
    """The run `.latest` points at (a link or a text file), else the newest run folder by name."""
    work_dir = Path(work_dir)
    latest = work_dir / ".latest"
    if latest.is_symlink():
        target = work_dir / os.readlink(latest)
        if target.is_dir():
            return target
    elif latest.is_file():
        target = work_dir / latest.read_text().strip()
        if target.is_dir():
            return target
    runs = sorted(p for p in work_dir.glob("[0-9]*_*") if (p / "explain").is_dir()) if work_dir.is_dir() else []
    return runs[-1] if runs else None


def resume_target(work_dir: Union[str, Path], resume: Union[bool, str, Path]) -> Path:
    """The run folder `--resume` continues: True -> the newest run of work_dir; a path -> that run
    (a run folder, or a work dir: its newest run)."""
    if resume is True:
        run = latest_run(Path(work_dir))
        if run is None:
            raise XaifastError(f"--resume True: {work_dir} has no run to continue; start one without --resume")
        return run
    path = Path(resume)
    if (path / "explain").is_dir():
        return path.resolve() if path.is_symlink() else path
    run = latest_run(path) if path.is_dir() else None
    if run is None:
        raise XaifastError(f"--resume {resume}: not a run folder (no explain/ inside) nor a work dir with runs")
    return run


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
