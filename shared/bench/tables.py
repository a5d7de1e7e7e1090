"""Result tables: the options of every reproduce/bench script, where they write, and tables
of paper-vs-ours rows as CSV + Markdown, copied into READMEs between markers.
"""
from __future__ import annotations

import csv
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .measure import hardware_info


@dataclass
class ResultsConfig:
    """Options shared by every paper's ``reproduce.py`` and ``bench.py`` (parsed with
    :func:`shared.train.config.parse_config`, so ``--smoke`` alone means true)."""
    smoke: bool = False
    """tiny sizes that run in seconds (what the tests run); never written into results/"""
    out: str = ""
    """output directory; "" = the paper's results/ (or runs/<paper>/smoke_results with --smoke)"""


def results_dir(results, out: str = "", smoke: bool = False) -> Path:
    """Where a reproduce/bench run writes its tables: ``out`` when given; otherwise the paper's
    committed ``results`` folder for full runs and ``<repo>/runs/<paper>/smoke_results`` for smoke
    runs, so smoke numbers never enter ``results/``."""
    if out:
        return Path(out)
    results = Path(results)
    if smoke:
        return results.parent.parent / "runs" / results.parent.name / "smoke_results"
    return results


def begin(cfg, results) -> Path:
    """The start of every ``bench.py``: torch's CPU threads from ``--threads`` (when the config
    has it and it is positive), ``--repeat 1`` under ``--smoke`` (when the config has it), and the
    folder the tables go to (:func:`results_dir`)."""
    import torch

    if getattr(cfg, "threads", 0) > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.smoke and hasattr(cfg, "repeat"):
        cfg.repeat = 1
    return results_dir(results, cfg.out, cfg.smoke)


def publish(cfg, results, paths, readme: bool = True) -> None:
    """The end of every ``reproduce.py`` and ``bench.py``: a full run into the paper's ``results``
    folder (``cfg`` a :class:`ResultsConfig` without ``--smoke`` or ``--out``) copies the tables
    into the paper's README beside that folder (a table that the other script has not written yet
    leaves the README as it is, with a note); then it says which files it wrote."""
    if readme and not cfg.smoke and not cfg.out:
        path = Path(results).parent / "README.md"
        try:
            copy_tables_to_readme(path, results)
        except FileNotFoundError as exc:
            print(f"{path} not updated yet: {exc}")
    if paths:
        print("wrote " + ", ".join(str(p) for p in paths))


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return "" if v is None else str(v)


def copy_tables_to_readme(readme, results) -> list[str]:
    """Copy generated tables into a README, so that no result there is typed by hand.

    The text between each ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` marker pair of
    ``readme`` is replaced by ``results/NAME.md`` without its ``# title`` line (the README gives
    each table its own heading). Returns the names copied; a marker whose table does not exist
    raises FileNotFoundError naming it.
    """
    readme, results = Path(readme), Path(results)
    text = readme.read_text()
    names = re.findall(r"<!-- table:([\w.-]+) -->", text)
    for name in names:
        md = results / f"{name}.md"
        if not md.is_file():
            raise FileNotFoundError(f"{readme} shows the table {name!r}, but {md} does not exist; "
                                    f"run the paper's reproduce and bench commands first")
        body = md.read_text().split("\n", 1)[1].strip()          # drop the '# title' line
        text = re.sub(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)",
                      lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    readme.write_text(text)
    return names


def print_rows(title: str, rows: list[dict]) -> None:
    """Print a table's rows as ``key=value`` lines (floats to 4 significant digits)."""
    print(f"\n{title}:")
    for row in rows:
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))


def write_table(stem, rows: list[dict], title: str, command: str | None = None,
                seed: int | None = None, notes: list[str] | tuple = (), columns=None) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` from a list of row dicts.

    The Markdown starts with the title, the command that produced it (default: this process's
    command line), the hardware, the seed and the notes (e.g. "paper: Table 3 of arXiv …;
    ours: scaled-down, tiny preset"). Paper columns must hold only numbers quoted from the paper.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
    command = command or " ".join(getattr(sys, "orig_argv", sys.argv))
    csv_path = stem.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in columns})
    md = [f"# {title}", "", f"- command: `{command}`", f"- hardware: {hardware_info()}",
          f"- date: {time.strftime('%Y-%m-%d')}"]
    if seed is not None:
        md.append(f"- seed: {seed}")
    md += [f"- {n}" for n in notes]
    md += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(row.get(k)) for k in columns) + " |" for row in rows]
    md_path = stem.with_suffix(".md")
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path
