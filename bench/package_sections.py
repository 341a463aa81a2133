"""Write a 4-class set of real paragraphs: Debian package descriptions labelled with their archive section.

    apt-get update -o Acquire::Languages=en        # once: apt's lists with the English descriptions
    .venv/bin/python bench/package_sections.py /tmp/sections
    .venv/bin/python bench/quality.py /tmp/sections

A stand-in for the long-input shape (news paragraphs, four topics) that no set in data/ has, with text
people wrote rather than joined requests (bench/paragraphs.py): each row is one package's synopsis and long
description (median about 420 characters), the label its section (`games`, `science`, `sound`, `net`).
Topics overlap as news topics do: a music game, a network sound server, a science package that plots over
the network. Packages built from one source share their wording, so each source goes whole to one split
(seeded by its name): 300 rows of each label for train, 125 each for dev and test, balanced as the news set is.
Debugging, documentation, data and development packages are left out (their descriptions repeat the main
package's). Reads apt's lists in /var/lib/apt/lists through `/usr/lib/apt/apt-helper cat-file`, so it runs on
a Debian or Ubuntu machine only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
from pathlib import Path

import pandas as pd

SECTIONS = ["games", "science", "sound", "net"]
ROWS = {"train": 300, "dev": 125, "test": 125}
LEFT_OUT = re.compile(r"-(data|doc|dev|dbg|dbgsym|common|examples|tests?)$")
MAX_CHARS = 1200
LISTS = Path("/var/lib/apt/lists")


def records(text: str) -> list[dict[str, str]]:
    """The stanzas of a Packages or Translation file, continuation lines joined to their field."""
    out = []
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def index_text(pattern: str) -> str:
    """Every list in apt's lists directory matching `pattern`, decompressed and concatenated."""
    paths = sorted(LISTS.glob(pattern))
    if not paths:
        raise SystemExit(f"no {pattern} in {LISTS}: run `apt-get update -o Acquire::Languages=en` first.")
    helper = "/usr/lib/apt/apt-helper"
    return "\n\n".join(
        subprocess.run([helper, "cat-file", str(p)], check=True, capture_output=True, text=True).stdout for p in paths
    )


def paragraph(description: str) -> str:
    """The synopsis line and the long description as one paragraph (apt's ' .' blank lines dropped)."""
    lines = description.splitlines()
    body = " ".join(line.strip() for line in lines[1:] if line.strip() != ".")
    text = f"{lines[0].strip()}. {body}".strip()
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS].rsplit(" ", 1)[0]


def split_of(source: str) -> float:
    """A source's place in [0, 1), the same on every machine (not Python's salted hash)."""
    return int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) / 16**8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write train.csv, dev.csv and test.csv to")
    args = parser.parse_args()
    english = {
        r["Package"]: r["Description-en"]
        for r in records(index_text("*_i18n_Translation-en*"))
        if "Description-en" in r
    }
    by_source: dict[tuple[str, str], str] = {}
    for r in records(index_text("*_binary-*_Packages*")):
        name, section = r.get("Package", ""), r.get("Section", "")
        if section in SECTIONS and name in english and not LEFT_OUT.search(name):
            source = r.get("Source", name).split()[0]
            by_source.setdefault((section, source), paragraph(english[name]))
    frame = pd.DataFrame(
        [(source, text, section) for (section, source), text in by_source.items() if len(text) >= 200],
        columns=["source", "user_input", "ground_truth_output"],
    ).drop_duplicates("user_input")
    frame["place"] = frame["source"].map(split_of)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {name: [] for name in ROWS}
    for section, rows in frame.groupby("ground_truth_output"):
        rows = rows.sort_values("place")
        start = 0
        for name, count in ROWS.items():
            parts[name].append(rows.iloc[start : start + count])
            start += count
        if start > len(rows):
            raise SystemExit(f"section {section} has {len(rows)} usable packages, fewer than {start}")
    for name, pieces in parts.items():
        rows = pd.concat(pieces).sample(frac=1, random_state=0)[["user_input", "ground_truth_output"]]
        rows.to_csv(args.out / f"{name}.csv", index=False)
    sizes = ", ".join(f"{name} {sum(len(p) for p in pieces)}" for name, pieces in parts.items())
    print(f"{args.out}: {sizes}; median input {int(frame['user_input'].str.len().median())} characters")


if __name__ == "__main__":
    main()
