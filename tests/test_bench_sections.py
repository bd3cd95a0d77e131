"""bench/sections.py: a benchmark re-run replaces its own section of docs/BENCHMARKS.md, nothing else."""

from __future__ import annotations

from bench.sections import write_report, write_section


def test_a_rerun_replaces_only_its_section_and_keeps_the_blank_line_before_the_next(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold\n\n## B\n\nb\n")
    write_section("## A", "new", doc)
    write_section("## A", "newer", doc)
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nnewer\n\n## B\n\nb\n"


def test_a_new_section_is_appended(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## A\n\na\n")
    write_section("## C", "c", doc)
    assert doc.read_text() == "# Benchmarks\n\n## A\n\na\n\n## C\n\nc\n"


def test_a_report_that_starts_with_its_heading_replaces_its_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold\n\n## B\n\nb\n")
    write_report("## A\n\nnew\nlines\n", doc)
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nnew\nlines\n\n## B\n\nb\n"
