"""Datasets: the manifest that names them and a loader that refuses bad files before anything runs.

Every check fails with one paragraph naming the file, the rows and the fix, because a bad dataset
found after an hour of LLM calls wastes the hour.
"""

from __future__ import annotations

import codecs
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptopt_dagster.core.errors import DatasetError, ManifestError, MissingLabelsError
from promptopt_dagster.core.yaml_input import load_yaml_file, sentence, unknown_key_message, validation_message
from promptopt_dagster.scoring.suite import AGGREGATE, ScorerSpec

COLUMNS = ("user_input", "ground_truth_output")
SPLITS = ("train", "dev", "test")
#: A dataset or optimization name becomes a Dagster partition key and a file name: keep it to what both take.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: the manifest's top-level keys
MANIFEST_KEYS = ("datasets", "scorers")


def check_name(value: str) -> str:
    """A dataset's or an optimization's name, refused in words rather than as a regular expression."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            "not a usable name: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit (a name becomes a Dagster partition key and a file name)"
        )
    return value


class DatasetSpec(BaseModel):
    """One entry of data/manifest.yaml. Unknown keys are refused: a misspelt `lables:` would otherwise run
    with free-form answers. Every field but the description decides results, so every one enters the
    fingerprint of the optimizations of the dataset (OptimizationSpec.fingerprint)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="the dataset's name: its key under `datasets:`, not a key inside the entry; 1 to 64 letters, "
        "digits, '_', '.' or '-', starting with a letter or digit (it becomes a Dagster partition key and a file name)"
    )
    description: str = Field("", description="free text for people; the one key that is not fingerprinted")
    files: dict[str, str] = Field(
        description="the CSV file of each split, train, dev and test (no other), relative to the data directory; "
        "each has the header user_input,ground_truth_output"
    )
    labels: list[str] = Field(
        default_factory=list, description="the answers allowed, matched without case; empty: free-form outputs"
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description="what a label means, in a few words ({label: text}, labels of `labels` only); the fewshot "
        "search tries an instruction that lists them",
    )
    scorers: list[ScorerSpec] = Field(
        default_factory=list,
        description="scorers with weights; none given means the single scorer `target_metric` (default accuracy)",
    )
    target_metric: str | None = Field(
        None,
        description="what the loop accepts and stops on: a scorer's name or aggregate (the weighted mean of all)",
        json_schema_extra={"default_text": "the one scorer's name; aggregate with several"},
    )
    initial_prompt: str = Field(
        description="the initial prompt's JSON file ({system_prompt, output_prompt}), relative to the prompts directory"
    )
    max_output_tokens: int = Field(8, description="the most tokens the task model may write for one answer")
    completion_stop: list[str] = Field(
        default_factory=lambda: ["\n"],
        description="where a base (completion-mode) model's answer ends; chat models end on their own",
    )

    _name = field_validator("name")(check_name)

    @model_validator(mode="after")
    def _one_scorer_by_default(self) -> DatasetSpec:
        if not self.scorers:
            self.scorers = [ScorerSpec(name=self.target_metric or "accuracy")]
        if self.target_metric is None:
            self.target_metric = AGGREGATE if len(self.scorers) > 1 else self.scorers[0].name
        unknown = [label for label in self.label_descriptions if label not in self.labels]
        if unknown:
            raise ValueError(
                f"label_descriptions names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not in labels {self.labels}; describe only "
                "labels the dataset has, spelled as in `labels`"
            )
        return self


def _read_manifest(path: Path) -> dict:
    try:
        raw = load_yaml_file(path, ManifestError, "It needs a `datasets:` mapping.")
    except FileNotFoundError:
        raise ManifestError(
            f"Dataset manifest {path} does not exist. Create it with a `datasets:` "
            "mapping (see data/manifest.yaml in the repository)."
        ) from None
    if isinstance(raw, dict):
        unknown = [key for key in raw if key not in MANIFEST_KEYS]
        if unknown:
            raise ManifestError(
                f"{path}: {unknown[0]}: {unknown_key_message(unknown[0], MANIFEST_KEYS)} (the manifest "
                "has `datasets:` and, for your own scorers, `scorers:`)."
            )
    return raw or {}


def load_user_scorers(path: Path) -> dict[str, str]:
    """The manifest's top-level `scorers:` mapping, name -> dotted path (or a path to an evaluate
    module, taken relative to the manifest's folder)."""
    raw = _read_manifest(path)
    entries = raw.get("scorers") if isinstance(raw, dict) else None
    if entries is None:
        return {}
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise ManifestError(
            f"Dataset manifest {path}: `scorers:` must map names to dotted paths, e.g. "
            "`scorers: {{keyword_overlap: mypackage.scorers:keyword_overlap}}`."
        )
    out = {}
    for name, target in entries.items():
        local = Path(path).parent / target
        out[str(name)] = str(local) if target.endswith(".py") or "/" in target else target
    return out


def load_manifest(path: Path) -> dict[str, DatasetSpec]:
    raw = _read_manifest(path)
    entries = raw.get("datasets") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ManifestError(f"Dataset manifest {path} has no `datasets:` mapping. Add one entry per dataset.")
    specs = {}
    for name, entry in entries.items():
        name = str(name)
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ManifestError(
                f"{path}: datasets.{name}: should be a mapping of settings (files, initial_prompt, "
                f"labels, ...), got {type(entry).__name__}."
            )
        if "name" in entry:
            raise ManifestError(
                f"{path}: datasets.{name}.name: not a known key; the entry's key is the dataset's "
                "name, so delete this one."
            )
        try:
            specs[name] = DatasetSpec(name=name, **{str(k): v for k, v in entry.items()})
        except ValidationError as exc:
            problems = validation_message(exc, ("datasets", name), DatasetSpec)
            raise ManifestError(sentence(f"{path}: {problems}")) from None
        missing = [s for s in SPLITS if s not in specs[name].files]
        if missing:
            raise ManifestError(
                f"{path}: datasets.{name}.files names no file for split(s) "
                f"{', '.join(missing)}. Add them under `files:`."
            )
        extra = [s for s in specs[name].files if s not in SPLITS]
        if extra:
            raise ManifestError(
                f"{path}: datasets.{name}.files.{extra[0]}: not a split; the splits are {', '.join(SPLITS)}."
            )
    return specs


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame

    def split(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

    def unlabeled(self) -> list[str]:
        """The splits whose file had no ground_truth_output column (read for a model migration)."""
        return [s for s in SPLITS if len(self.split(s)) and self.split(s)["ground_truth_output"].isna().all()]

    def to_frame(self) -> pd.DataFrame:
        """One long table (dataset, split, row_id, user_input, ground_truth_output) for the warehouse."""
        frames = [f.assign(split=s) for s, f in zip(SPLITS, (self.train, self.dev, self.test))]
        out = pd.concat(frames, ignore_index=True).assign(dataset=self.name)
        return out[["dataset", "split", "row_id", "user_input", "ground_truth_output"]]

    @classmethod
    def from_frame(cls, name: str, frame: pd.DataFrame) -> DatasetSplits:
        parts = {s: frame[frame["split"] == s][["row_id", *COLUMNS]].reset_index(drop=True) for s in SPLITS}
        return cls(name=name, **parts)


def read_split(path: Path, labels: list[str] | None = None, unlabeled_ok: bool = False) -> pd.DataFrame:
    """Read one CSV and validate it on its own; row numbers in errors are 1-based data rows.

    `unlabeled_ok`: a file without the ground_truth_output column is read with no labels (null), for
    a model migration, whose references come from the source model instead."""
    if not path.exists():
        raise DatasetError(
            f"Dataset file {path} does not exist. Check the path in data/manifest.yaml "
            f"or add the file with the header `{','.join(COLUMNS)}`."
        )
    text = _utf8_text(path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise DatasetError(
            f"Dataset file {path} is not valid CSV: {_parse_problem(str(exc))}. Quote fields that "
            'contain commas, quotes or newlines with double quotes ("like, this"), and write a quote '
            'inside one twice ("").'
        ) from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    unlabeled = missing == ["ground_truth_output"]
    if unlabeled and unlabeled_ok:
        frame["ground_truth_output"] = pd.Series([None] * len(frame), index=frame.index, dtype="string")
    elif missing:
        message = (
            f"Dataset file {path} is missing the column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns)) or 'none'}). The first line must be "
            f"the header `{','.join(COLUMNS)}`, one row per example."
        )
        if unlabeled:
            raise MissingLabelsError(f"{message} {MIGRATION_HINT}")
        raise DatasetError(message)
    if frame.empty:
        raise DatasetError(
            f"Dataset file {path} has a header but no rows. Add labeled examples, "
            f"one per line as `{','.join(COLUMNS)}`."
        )
    frame = frame[list(COLUMNS)].copy()
    no_input = frame["user_input"].fillna("").str.strip().eq("")
    no_label = frame["ground_truth_output"].str.strip().eq("").fillna(False).astype(bool)  # null: no label column
    blanks = [
        f"an empty {column} in data row(s) {data_row_numbers(frame.index[empty])}"
        for column, empty in zip(COLUMNS, (no_input, no_label))
        if empty.any()
    ]
    if blanks:
        raise DatasetError(f"Dataset file {path} has {' and '.join(blanks)}. Fill them in or delete those rows.")
    dupes = frame[frame.duplicated("user_input", keep="first")]
    if len(dupes):
        raise DatasetError(
            f"Dataset file {path} repeats the same user_input in data row(s) {data_row_numbers(dupes.index)}. "
            "Delete the repeats so no example counts twice."
        )
    if labels and not unlabeled:
        allowed = {l.casefold() for l in labels}
        bad = frame[~frame["ground_truth_output"].str.strip().str.casefold().isin(allowed)]
        if len(bad):
            raise DatasetError(
                f"Dataset file {path} has labels outside {labels} in data row(s) {data_row_numbers(bad.index)}. "
                "Fix those rows or add the label to `labels:` in data/manifest.yaml."
            )
    frame.insert(0, "row_id", range(len(frame)))
    return frame


def _parse_problem(message: str) -> str:
    """pandas' tokenizer message ("Error tokenizing data. C error: Expected 2 fields in line 3, saw 3") in our
    words, with the file's line number where pandas gives one."""
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        want, line, got = fields.groups()
        return f"line {line} has {got} fields where the header has {want}"
    quote = re.search(r"EOF inside string starting (?:at|on) (?:row|line) (\d+)", message)
    if quote:
        return f"a quoted field that starts on line {int(quote.group(1)) + 1} is never closed"
    line = re.search(r"line (\d+)", message)
    return f"pandas cannot split line {line.group(1)} into fields" if line else "pandas cannot split it into fields"


def _utf8_text(path: Path) -> str:
    """Decode up front: pandas would raise a bare UnicodeDecodeError with a byte offset, not a line.

    Spreadsheets write a BOM with "CSV UTF-8", so it is allowed; it is cut off here rather than by the
    utf-8-sig codec so that the error's offset points into `data`. The file is decoded once; lines are
    only counted when that fails.
    """
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = shlex.quote(str(path))
        raise DatasetError(
            f"Dataset file {path} is not UTF-8: line {line} has the byte 0x{data[exc.start]:02x}, which is not "
            "valid UTF-8 (the file was probably saved as Latin-1 or Windows-1252). Re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {name} > {name}.utf8 && mv {name}.utf8 {name}` (use `-f cp1252` for a "
            'file from Excel on Windows), or choose "CSV UTF-8" when saving from a spreadsheet.'
        ) from None


#: what to do about a file without labels: the end of every message that refuses one
MIGRATION_HINT = (
    "Add the ground_truth_output column with each row's expected output, or, to move a prompt from "
    "one model to another, set `source_model` on the optimization in data/optimizations.yaml: the "
    "source model's answers then become the references, and no label column is needed."
)


def load_splits(spec: DatasetSpec, data_dir: Path, unlabeled_ok: bool = False) -> DatasetSplits:
    """Every split, validated; `unlabeled_ok` lets files without labels through (model migration only)."""
    splits = {s: read_split(Path(data_dir) / spec.files[s], spec.labels, unlabeled_ok) for s in SPLITS}
    seen: dict[str, str] = {}
    for split, frame in splits.items():
        for text in frame["user_input"]:
            if text in seen:
                overlap = set(splits[seen[text]]["user_input"]) & set(frame["user_input"])
                raise DatasetError(
                    f"Dataset '{spec.name}': {len(overlap)} user_input value(s) appear in both "
                    f"{spec.files[seen[text]]} and {spec.files[split]}, e.g. {next(iter(overlap))[:80]!r}. "
                    "A held-out split must share no example with the others: delete them from one file."
                )
            seen[text] = split
    return DatasetSplits(name=spec.name, **splits)


def data_row_numbers(index, limit: int = 10) -> str:
    """0-based row positions as the 1-based data row numbers messages show, the first `limit` of them."""
    index = list(index)
    numbers = [str(i + 1) for i in index[:limit]]
    more = f" (and {len(index) - limit} more)" if len(index) > limit else ""
    return ", ".join(numbers) + more


def sample_rows(frame: pd.DataFrame, size: int | None, seed: int) -> pd.DataFrame:
    """A fixed, seeded subset: every iteration and every rerun scores exactly the same rows."""
    if size is None or size <= 0 or size >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=size, random_state=seed).sort_values("row_id").reset_index(drop=True)


def dev_parts(
    dev: pd.DataFrame, eval_size: int | None, select_size: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(select, confirm): dev rows that choose among candidates, and the disjoint rows that accept them.

    When the rows that pick a candidate also judge it, the loop climbs noise: the best of many
    candidates on a row set is partly the luckiest on it. Confirm rows are the eval rows
    (`sample_rows(dev, eval_size, seed)`, as before); select rows are drawn from the dev rows left
    over, and carved out of the confirm rows only when too few are left (a small dev split, or
    eval_size 0 = all of dev). A dev split of n rows gives at most n // 3 select rows."""
    confirm = sample_rows(dev, eval_size, seed)
    want = max(1, min(select_size, len(dev) // 3))
    rest = dev[~dev["row_id"].isin(confirm["row_id"])]
    if len(rest) < want:
        moved = confirm.sample(n=min(len(confirm) - 1, want - len(rest)), random_state=seed)
        confirm = confirm.drop(moved.index).reset_index(drop=True)
        rest = pd.concat([rest, moved])
    return sample_rows(rest, want, seed + 1), confirm


def spare_rows(dev: pd.DataFrame, select: pd.DataFrame, confirm: pd.DataFrame) -> pd.DataFrame:
    """Dev rows that neither choose nor accept candidates: what the fewshot race may also score on."""
    used = set(select["row_id"]) | set(confirm["row_id"])
    return dev[~dev["row_id"].isin(used)].reset_index(drop=True)
