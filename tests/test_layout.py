"""One owner per fact: the code's layout rules, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "src", "reports")
RUN_FILES = re.compile(
    r"(trials|curves|confirm)\.parquet|run\.json|report\.html|space\.yaml|pareto\.svg"
)


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def where(pattern: re.Pattern | str) -> set[str]:
    """The modules (relative paths) whose text matches ``pattern``."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return {str(p.relative_to(ROOT)) for p in sources() if rx.search(p.read_text())}


def test_only_the_checkpoint_module_unpickles_or_loads_checkpoints():
    assert where(r"torch\.load\(") == {"src/trainables/checkpoint.py"}


def test_run_folder_file_names_are_named_in_the_run_folder_module_only():
    assert where(RUN_FILES) == {"search/rundir.py"}


def test_no_function_is_longer_than_80_lines_but_the_argparse_builder():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80 and node.name != "_parser":
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not long


@pytest.mark.parametrize("package", ["reports", "src/trainables"])
def test_imports_point_one_way(package):
    """trainables imports neither search nor reports; reports imports neither search nor
    trainables (it renders the DataFrames it is given)."""
    banned = {"reports": ("search", "trainables"), "src/trainables": ("search", "reports")}[package]
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned]
    assert not bad


def test_reports_find_no_files():
    """reports/ renders what it is given: no Parquet reading, no file writing."""
    assert not where(r"read_parquet|to_parquet|write_text|open\(") & {
        str(p.relative_to(ROOT)) for p in (ROOT / "reports").rglob("*.py")
    }


def test_every_method_states_its_facts():
    from trainables.methods import METHODS
    from trainables.methods._base import EXPORT_FORMATS, HEAD, LAST_LAYER

    class Config:
        model_type, num_hidden_layers = "bert", 2

    for m in METHODS.values():
        assert m.export_format("bert") in EXPORT_FORMATS
        frozen = m.frozen(m.defaults(), Config())
        # None, the head's input, the last layer's output, or a layer k (nothing below it trains)
        assert frozen in (None, HEAD, LAST_LAYER) or (
            type(frozen) is int and 0 < frozen <= Config.num_hidden_layers
        ), (m.name, frozen)
        assert set(m.log_knobs()) <= {k.name for k in m.knobs}


def test_the_printed_schema_shows_the_sections_own_defaults():
    """``validate --help`` prints SCHEMA; the dataclasses own the defaults: they agree."""
    from dataclasses import asdict, fields

    import yaml

    from search.space import (
        DEFAULT_STORAGE,
        SCHEMA,
        Experiment,
        Resources,
        Scheduler,
        Search,
        _Loader,
    )
    from trainables.loop import TrainConfig

    shown = yaml.load(SCHEMA.split("\n\nA distribution")[0], Loader=_Loader)
    for section, cls in [("experiment", Experiment), ("search", Search),
                         ("scheduler", Scheduler), ("resources", Resources)]:  # fmt: skip
        default = asdict(cls())
        assert shown[section] == default, section
    assert shown["storage"] == DEFAULT_STORAGE
    for key, value in shown["train"].items():
        assert value == next(f.default for f in fields(TrainConfig) if f.name == key)
