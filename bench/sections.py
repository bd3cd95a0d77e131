"""docs/BENCHMARKS.md has one section per benchmark; a re-run replaces only its own."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def write_section(section: str, body: str, doc: Path = DOC) -> None:
    """Put ``body`` under the heading ``section`` (``## …``), replacing what was there, or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{section}\n\n{body}\n"
    if section in text:
        head, _, rest = text.partition(section)
        nxt = rest.find("\n## ")
        text = head + block + ("\n" + rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.write_text(text)


def write_report(text: str, doc: Path = DOC) -> None:
    """``write_section`` for a report whose first line is its own ``## …`` heading."""
    heading, _, body = text.partition("\n")
    write_section(heading, body.strip("\n"), doc)


def publish(text: str, write: bool, doc: Path = DOC) -> None:
    """Print a report (its first line its ``## …`` heading); with ``write``, put it in ``doc`` too."""
    print()
    print(text)
    if write:
        write_report(text, doc)
        print(f"written to {doc}")
