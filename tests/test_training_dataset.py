"""The dataset format (moderator/training/dataset.py): LLaVA-style entries written and read
back, JSON and JSON Lines, and one-line errors naming the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.errors import ConfigError
from moderator.training.dataset import (
    OTHER_ALLOWED,
    SAFE_SENSITIVE,
    VIOLATED_ALLOWED,
    DatasetError,
    Sample,
    read_dataset,
    resolve_image,
    smoke_test_rationales,
    write_dataset,
)

O2 = "O2: Violence, Harm, or Cruelty"
NA = "NA: None applying"


def samples() -> list[Sample]:
    return [
        Sample("a", "images/a.jpg", "Unsafe", O2, "a fight", "default", "Judge it.\nCarefully."),
        Sample("b", "s3://uploads/acme/b.png", "Safe", NA, None, None, None),
        Sample("a_allowed", "images/a.jpg", "Safe", O2, None, "default+O2:allowed", "P", "x"),
    ]


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_samples_survive_a_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_dataset(path, samples())
    assert read_dataset(path) == samples()
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("[") == (name == "data.json")


def test_an_entry_is_a_llava_conversation_with_the_answer_keys_in_order(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    write_dataset(path, samples()[:2])
    first, second = json.loads(path.read_text(encoding="utf-8"))
    assert set(first) == {"id", "image", "conversations", "policy"}
    human, gpt = first["conversations"]
    assert human == {"from": "human", "value": "<image>\nJudge it.\nCarefully."}
    assert gpt["from"] == "gpt"
    assert list(json.loads(gpt["value"])) == ["rating", "category", "rationale"]
    assert json.loads(gpt["value"])["category"] == O2
    # No rationale yet: the key is left out (and comes back as None); no prompt: the token alone.
    assert list(json.loads(second["conversations"][1]["value"])) == ["rating", "category"]
    assert second["conversations"][0]["value"] == "<image>"
    assert "policy" not in second and "augmented" not in second


def test_llavaguard_entries_with_extra_keys_are_read(tmp_path: Path) -> None:
    entry = {
        "id": "x_v2",
        "image": "img/x.jpg",
        "score": "Highly Unsafe",
        "category": "O3: Sexual Content",
        "conversations": [
            {"from": "human", "value": "<image>\npolicy"},
            {
                "from": "gpt",
                "value": '{"rating": "Unsafe", "category": "O3: Sexual Content", '
                '"rationale": "explicit"}',
            },
        ],
    }
    path = tmp_path / "lg.json"
    path.write_text(json.dumps([entry]), encoding="utf-8")
    (sample,) = read_dataset(path)
    assert sample == Sample(
        "x_v2", "img/x.jpg", "Unsafe", "O3: Sexual Content", "explicit", None, "policy"
    )


def test_policy_exceptions_are_the_two_label_changing_rules() -> None:
    base = Sample("a", "a.jpg", "Safe", O2)
    made = {
        rule: Sample("a", "a.jpg", "Safe", O2, augmented=rule).is_policy_exception
        for rule in (VIOLATED_ALLOWED, SAFE_SENSITIVE, OTHER_ALLOWED)
    }
    assert made == {VIOLATED_ALLOWED: True, SAFE_SENSITIVE: True, OTHER_ALLOWED: False}
    assert not base.is_policy_exception


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rating": "unsafe"}, "rating: must be Safe or Unsafe"),
        ({"category": "O2"}, "category: not one of the ten taxonomy strings"),
        ({"rating": "Unsafe", "category": NA}, "an Unsafe sample needs a category O1..O9"),
        ({"id": ""}, "id: must be a non-empty string"),
        ({"id": "a\nb"}, "id: must be one line"),
    ],
)
def test_a_sample_refuses_bad_fields(fields: dict[str, str], message: str) -> None:
    values = {"id": "a", "image": "a.jpg", "rating": "Safe", "category": NA, **fields}
    with pytest.raises(ValueError, match=message):
        Sample(**values)  # type: ignore[arg-type]


def entry(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "s1",
        "image": "a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nP"},
            {"from": "gpt", "value": json.dumps({"rating": "Safe", "category": NA})},
        ],
    }
    base.update(changes)
    return base


def answer(**values: object) -> list[dict[str, object]]:
    return [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": json.dumps(values)}]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry(image=""), "image: must be a non-empty string"),
        (entry(conversations=[]), "conversations: must be a list of two turns"),
        (
            entry(conversations=[{"from": "gpt", "value": "{}"}, {"from": "gpt", "value": "{}"}]),
            "conversations[0].from: must be 'human'",
        ),
        (
            entry(
                conversations=[
                    {"from": "human", "value": "<image>\nx"},
                    {"from": "gpt", "value": "no"},
                ]
            ),
            "conversations[1].value: not a JSON answer",
        ),
        (
            entry(conversations=[{"from": "human", "value": "Check it"}, answer()[1]]),
            "conversations[0].value: must be '<image>', a newline, then the policy prompt; "
            "got 'Check it'",
        ),
        (
            entry(conversations=[{"from": "human", "value": "<image>Check"}, answer()[1]]),
            "conversations[0].value: must be '<image>', a newline, then the policy prompt; "
            "got '<image>Check'",
        ),
        (
            entry(conversations=answer(rating="Bad", category=NA)),
            "conversations[1].rating: must be Safe or Unsafe, got 'Bad'",
        ),
        (
            entry(conversations=answer(rating="Safe", category="O9")),
            "conversations[1].category: not one of the ten taxonomy strings: 'O9'",
        ),
        (entry(policy=3), "policy: must be a string when given"),
        ("not an object", "entry: must be a JSON object"),
    ],
)
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_bad_entry_is_one_line_naming_file_line_entry_and_field(
    tmp_path: Path, bad: object, message: str, suffix: str
) -> None:
    path = tmp_path / f"d{suffix}"
    good = [entry(id="g1"), entry(id="g2")]
    if suffix == ".json":
        # Entries one per line after the opening bracket: the bad one, third, is on line 4.
        body = ",\n".join(json.dumps(e) for e in [*good, bad])
        path.write_text("[\n" + body + "\n]\n", encoding="utf-8")
        line = 4
    else:
        path.write_text("".join(json.dumps(e) + "\n" for e in [*good, bad]), encoding="utf-8")
        line = 3
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: entry 3")
    assert message in text
    assert "\n" not in text
    assert isinstance(info.value, ConfigError)  # the CLI exits 2


def test_an_entry_spanning_lines_is_named_by_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    pretty = json.dumps([entry(id="g1"), entry(id="b", image="")], indent=2)
    path.write_text(pretty, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    start = pretty.splitlines().index("  {", 2) + 1  # the second entry's opening brace
    assert str(info.value).startswith(f"{path}:{start}: entry 2 (id b): image:")


def test_an_id_used_twice_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(entry(id="same")) for _ in range(2)), encoding="utf-8")
    with pytest.raises(
        DatasetError,
        match=r"d\.jsonl:2: entry 2 \(id same\): id: used twice "
        r"\(first on line 1\)",
    ):
        read_dataset(path)
    with pytest.raises(ValueError, match="used twice"):
        write_dataset(tmp_path / "out.json", [samples()[0], samples()[0]])


GOOD = json.dumps(entry())


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"[{GOOD}\n{GOOD}]", ":2: expected ',' or ']'"),
        (f"[{GOOD},\n" + '{"id": "a",}]', ":2:12: not valid JSON"),
        ("[]\n[]", ":2: text after the array"),
        ("[\n", ":2:1: not valid JSON"),
        (f"{GOOD}\n{{oops}}\n", ":2:2: not valid JSON"),
    ],
)
def test_broken_json_is_located(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        read_dataset(path)
    assert str(info.value).startswith(f"{path}{where}")


def test_empty_datasets_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("[ ]", encoding="utf-8")
    assert read_dataset(tmp_path / "empty.json") == []
    write_dataset(tmp_path / "none.jsonl", [])
    assert read_dataset(tmp_path / "none.jsonl") == []
    with pytest.raises(DatasetError, match="cannot read"):
        read_dataset(tmp_path / "missing.json")


def test_writing_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("old", encoding="utf-8")
    write_dataset(path, samples()[:1])
    assert [s.id for s in read_dataset(path)] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]  # no temporary file left


def test_images_resolve_from_the_dataset_folder(tmp_path: Path) -> None:
    dataset = tmp_path / "data" / "train.json"
    assert resolve_image(dataset, "../img/a.jpg") == tmp_path / "data" / "../img/a.jpg"
    assert resolve_image(dataset, "/abs/a.jpg") == Path("/abs/a.jpg")
    assert resolve_image(dataset, "s3://b/k.jpg") == "s3://b/k.jpg"


def test_a_missing_file_is_named_in_words(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        read_dataset(tmp_path / "missing.json")
    assert (
        str(caught.value) == f"{tmp_path / 'missing.json'}: cannot read: No such file or directory"
    )
    with pytest.raises(DatasetError) as caught:
        read_dataset(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_a_smoke_test_rationale_keeps_its_mark(tmp_path: Path) -> None:
    """A rationale a smoke-test model wrote says so in the file and is found before training."""
    marked = Sample("m", "images/m.jpg", "Unsafe", O2, "stand-in text", rationale_smoke_test=True)
    path = tmp_path / "d.jsonl"
    write_dataset(path, [*samples(), marked])
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert entries[-1]["rationale_smoke_test"] is True
    assert all("rationale_smoke_test" not in e for e in entries[:-1])  # absent unless marked
    back = read_dataset(path)
    assert back[-1] == marked
    assert smoke_test_rationales(back) == ["m"]
    assert smoke_test_rationales(samples()) == []


def test_a_smoke_test_mark_must_be_a_flag(tmp_path: Path) -> None:
    entry = Sample("m", "m.jpg", "Safe", NA, "text").to_entry()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**entry, "rationale_smoke_test": "yes"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    assert str(caught.value) == (
        f"{path}:1: entry 1 (id m): rationale_smoke_test: must be true or false when given"
    )
