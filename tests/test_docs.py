"""The documentation stays true to the code: the config reference lists exactly the config's
keys with their defaults, links resolve, user docs carry no development history, and the
benchmark record keeps one table per benchmark, written only on request."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mmcontrast.config import Config
from mmcontrast.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "config.md"
USER_DOCS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
BENCHMARKS = ROOT / "scripts" / "BENCHMARKS.md"
# the benchmark scripts that must print only unless run with --write
BENCH_SCRIPTS = [
    "bench_cpu_chunks.py",
    "bench_data.py",
    "bench_memory.py",
    "bench_retrieval.py",
    "bench_train.py",
    "bench_finetune_demo.py",
    "bench_search.py",
    "bench_embed.py",
    "bench_distill_demo.py",
    "bench_finetune.py",
]


# ------------------------------------------------------------------ config reference


def config_keys(node: Any = None, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of the Config tree as ``dotted.key -> default value``."""
    node = Config() if node is None else node
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(config_keys(value, prefix + f.name + "."))
        else:
            keys[prefix + f.name] = value
    return keys


ROW = re.compile(r"^\| `([^`]+)` \| `([^`]*)` \|")


def expand(key: str) -> list[str]:
    """``model.{vision,text}.lr`` -> ``model.vision.lr``, ``model.text.lr``."""
    match = re.search(r"\{([^}]+)\}", key)
    if not match:
        return [key]
    head, tail = key[: match.start()], key[match.end() :]
    return [k for part in match.group(1).split(",") for k in expand(head + part + tail)]


def documented_keys() -> dict[str, str]:
    """``key -> default cell`` from every reference table row of docs/config.md."""
    documented: dict[str, str] = {}
    for line in CONFIG_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            for key in expand(match.group(1)):
                assert key not in documented, f"docs/config.md documents {key!r} twice"
                documented[key] = match.group(2)
    return documented


def same_default(key: str, cell: str, value: Any) -> bool:
    """Whether the documented default (YAML) is the dataclass default."""
    if key == "method":  # a method is named by its registered name or an alias
        return METHODS.canonical(cell) == METHODS.canonical(value)
    if isinstance(value, str):  # as written: YAML would read `no` (mixed precision) as false
        return cell.strip("'\"") == value
    written = yaml.safe_load(cell)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and not isinstance(written, bool):
        try:
            return math.isclose(float(written), value, rel_tol=1e-5)
        except (TypeError, ValueError):
            return False
    if isinstance(value, list) and isinstance(written, list):
        return len(value) == len(written) and all(
            math.isclose(a, b) if isinstance(a, float) else a == b
            for a, b in zip(value, written, strict=True)
        )
    return written == value


def test_every_config_key_is_documented() -> None:
    missing = sorted(set(config_keys()) - set(documented_keys()))
    assert not missing, (
        f"docs/config.md lacks {missing}: add a row `| \\`key\\` | \\`default\\` | meaning |` "
        "to its section"
    )


def test_the_config_reference_documents_no_stale_key() -> None:
    stale = sorted(set(documented_keys()) - set(config_keys()))
    assert not stale, f"docs/config.md documents keys that no longer exist: {stale}"


def test_the_config_reference_gives_the_current_defaults() -> None:
    documented = documented_keys()
    wrong = [
        f"{key}: documented {documented[key]!r}, actual {value!r}"
        for key, value in config_keys().items()
        if key in documented and not same_default(key, documented[key], value)
    ]
    assert not wrong, "docs/config.md defaults differ from mmcontrast/config.py:\n" + "\n".join(
        wrong
    )


def test_brace_keys_expand() -> None:
    assert expand("model.{vision,text}.lr") == ["model.vision.lr", "model.text.lr"]
    assert expand("train.lr") == ["train.lr"]


# ------------------------------------------------------------------ links and wording

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = heading.strip().lstrip("#").strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(line) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


HISTORY = re.compile(
    r"\bissues? \d|\bsessions? \d|\bgoal\b|not (yet )?reached|\b20\d\d-\d\d-\d\d\b|"
    r"\bthe VM\b|\bhelper's\b",
    re.I,
)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_user_docs_carry_no_development_history(doc: Path) -> None:
    hits = [
        f"line {n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not hits, (
        f"{doc.relative_to(ROOT)} reads like a diary (issue numbers, dates, goals): {hits}; "
        "development notes belong in scripts/NOTES.md"
    )


# ------------------------------------------------------------------ benchmarks


def benchmark_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    heading = None
    for line in BENCHMARKS.read_text().splitlines():
        if line.startswith("## "):
            assert line not in sections, f"BENCHMARKS.md has two sections {line!r}"
            heading = line
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections


def test_benchmarks_keep_one_table_per_benchmark_with_its_command() -> None:
    sections = benchmark_sections()
    assert sections
    for heading, body in sections.items():
        tables = len(re.findall(r"^\| ?:?-{3}", body, flags=re.M))
        assert tables == 1, f"{heading}: {tables} tables; keep only the current one"
        assert re.search(r"`[^`]*scripts/bench_\w+\.py[^`]*`", body), (
            f"{heading}: give the command that produced the table"
        )


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / "scripts" / name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_bench_scripts_write_benchmarks_only_with_write(script: str) -> None:
    source = (ROOT / "scripts" / script).read_text()
    assert "add_write_flag(parser)" in source, f"{script}: take --write (bench_report)"
    assert "publish(" in source, f"{script}: record results through bench_report.publish"
    assert "write_section(" not in source, f"{script}: write BENCHMARKS.md only with --write"


def test_publish_writes_only_when_asked(tmp_path: Path) -> None:
    report = load_script("bench_report.py")
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# Benchmarks\n\n## A\n\nold\n\n## B\n\nkept\n")
    report.publish("## A", "## A\n\nnew\n", write=False, path=record)
    assert "old" in record.read_text()
    report.publish("## A", "## A\n\nnew\n", write=True, path=record)
    assert record.read_text() == "# Benchmarks\n\n## A\n\nnew\n\n## B\n\nkept\n"
