"""conditions=prompts: prompt files (txt, CSV, Parquet), sample i -> prompt i mod P, hashes that cover the texts."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models import make_model
from diffbench.models.conditions import ConditionSet, make_conditions
from diffbench.models.text import with_conditions
from tests.helpers.cli import run_cli


def prompt_set(n: int, **options: object) -> ConditionSet:
    return make_conditions({"name": "prompts", **options}, n, 0)


def test_shipped_smoke_list_is_the_default() -> None:
    conditions = prompt_set(40)
    assert len(conditions.texts) == 16 and conditions.name == "prompts:prompts_smoke.txt"
    assert conditions.take([0, 15, 16, 39]).tolist() == [0, 15, 0, 7]  # sample i gets prompt i mod 16


def test_text_csv_and_parquet_give_the_same_set(tmp_path: Path) -> None:
    texts = ["a red fox", "a blue boat", "a green field"]
    (tmp_path / "p.txt").write_text("\n".join([texts[0], "", *texts[1:]]) + "\n")  # blank lines are skipped
    pd.DataFrame({"id": [1, 2, 3], "caption": texts}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "p.parquet")
    sets = [prompt_set(5, path=str(tmp_path / "p.txt")), prompt_set(5, path=str(tmp_path / "p.csv")),
            prompt_set(5, path=str(tmp_path / "p.parquet"), column="text")]
    assert all(s.texts == tuple(texts) for s in sets)
    assert len({s.content_hash for s in sets}) == 1  # the same prompts per sample, whatever the file type


def test_hash_covers_the_texts(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a cat\na dog\n")
    (tmp_path / "b.txt").write_text("a cat\na bird\n")
    a, b = prompt_set(4, path=str(tmp_path / "a.txt")), prompt_set(4, path=str(tmp_path / "b.txt"))
    assert torch.equal(a.labels, b.labels) and a.content_hash != b.content_hash


def test_class_label_hashes_are_unchanged() -> None:
    labels = torch.arange(8) % 3
    expected = hashlib.sha256(labels.numpy().astype("<i8").tobytes()).hexdigest()[:16]
    assert ConditionSet("balanced-cyclic", labels).content_hash == expected


def test_missing_column_and_empty_file_are_usage_errors(tmp_path: Path) -> None:
    pd.DataFrame({"caption": ["x"]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(UsageError, match="conditions.column=prompt is not a column"):
        prompt_set(2, path=str(tmp_path / "p.csv"), column="prompt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UsageError, match="holds no prompts"):
        prompt_set(2, path=str(tmp_path / "empty.txt"))


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_missing_prompt_file_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "sweep", "model=class_gmm", "metrics=error_only", "conditions=prompts",
                           f"conditions.path={tmp_path / 'nope.txt'}", "guidance=cfg", f"out={tmp_path / 'out'}")
    assert code == 2 and "nope.txt" in err and "no such file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_prompts_need_a_text_model() -> None:
    model = make_model("class_gmm", {"dim": 2, "classes": 4})
    with pytest.raises(UsageError, match="holds text prompts; this model takes class labels"):
        with_conditions(model, prompt_set(4))


def test_class_label_sets_refuse_text_models() -> None:
    with pytest.raises(UsageError, match="text-to-image models take conditions=prompts"):
        make_conditions({"name": "balanced"}, 4, 0)  # a text model has no classes until it gets prompts
