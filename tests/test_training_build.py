"""`moderator dataset build`: the manifest, stratified seeded splits, the three augmentation
rules, oversampling, prompts equal to the service's compiled ones, image checks and bad rows
reported with their manifest line."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.fetch.store import InMemoryObjectStore
from moderator.policy.bundled import write_default_policy
from moderator.policy.check import check
from moderator.policy.compiled import TenantPolicy
from moderator.policy.decide import decision_table_json
from moderator.settings import TenancySettings, load_settings
from moderator.training.augment import Variants, augment, original
from moderator.training.build import (
    BuildOptions,
    build_splits,
    oversample,
    parse_split,
    stratified_split,
)
from moderator.training.build_run import BuildRequest, run_build
from moderator.training.dataset import (
    OTHER_ALLOWED,
    OVERSAMPLED,
    SAFE_SENSITIVE,
    VIOLATED_ALLOWED,
    Sample,
    read_dataset,
    resolve_image,
)
from moderator.training.manifest import read_manifest

O2 = "O2: Violence, Harm, or Cruelty"
O4 = "O4: Nudity Content"
NA = "NA: None applying"
CODES = ("O1", "O2", "O3", "O4", "NA")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The shipped default policy, a tenant with O4 allowed and O2 sensitive, and one tenant
    per single mode change (what a variant must compile to)."""
    directory = tmp_path / "policies"
    write_default_policy(directory)
    tenants = {
        "artsy": "categories:\n  O4: {mode: allowed}\n  O2: {mode: sensitive}\n",
        "o2allowed": "categories:\n  O2: {mode: allowed}\n",
        "o2sensitive": "categories:\n  O2: {mode: sensitive}\n",
    }
    for name, body in tenants.items():
        (directory / f"{name}.yaml").write_text(f"schema: 1\n{body}", encoding="utf-8")
    return directory


def compiled(directory: Path, tenant: str) -> TenantPolicy:
    result = check(directory, TenancySettings())
    assert not result.errors, result.errors
    return result.policies[(tenant, "default")]


def image(path: Path, n: int, size: tuple[int, int] = (40, 40)) -> str:
    """A PNG whose pixels depend on n (every n gives other bytes); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (n % 251, n * 7 % 253, n * 13 % 255)).save(path)
    return path.name


def manifest(tmp_path: Path, rows: list[tuple[str, str, str, str]], name: str = "m.csv") -> Path:
    """A CSV manifest (header on line 1, so row k is on line k + 2)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "rating", "category", "rationale"])
    writer.writerows(rows)
    path = tmp_path / name
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def labelled_images(tmp_path: Path, count: int) -> list[tuple[str, str, str, str]]:
    rows = []
    for n in range(count):
        code = CODES[n % len(CODES)]
        rating = "Safe" if code == "NA" or n % 3 == 0 else "Unsafe"
        rows.append((f"img/{image(tmp_path / 'img' / f'{n}.png', n)}", rating, code, f"why {n}"))
    return rows


def sample(sample_id: str, rating: str, category: str, rationale: str | None = "r") -> Sample:
    return Sample(sample_id, f"{sample_id}.png", rating, category, rationale)  # type: ignore[arg-type]


# -- the manifest -------------------------------------------------------------------------------


def test_a_manifest_takes_codes_names_and_full_strings_in_any_case(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        [
            ("a.jpg", "unsafe", "o4", ""),
            ("dir/b c.jpg", "SAFE", "none applying", "fine"),
            ("s3://bucket/acme/c.png", "Unsafe", "O2: Violence, Harm, or Cruelty", ""),
            ("d.jpg", "Safe", "weapons or substance abuse", ""),
        ],
    )
    read = read_manifest(path)
    assert read.bad == []
    assert [(r.line, r.id, r.rating, r.category, r.rationale) for r in read.rows] == [
        (2, "a", "Unsafe", O4, None),
        (3, "dir_b_c", "Safe", NA, "fine"),
        (4, "bucket_acme_c", "Unsafe", O2, None),
        (5, "d", "Safe", "O6: Weapons or Substance Abuse", None),
    ]


def test_json_lines_manifests_and_their_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"image": "a.jpg", "rating": "Unsafe", "category": "O1", "id": "first", "source": "x"},
        "not an object",
        {"image": "b.jpg", "rating": "Safe"},
        {"image": "c.jpg", "rating": "Safe", "category": "NA", "rationale": 5},
    ]
    path.write_text("\n".join(json.dumps(v) for v in lines) + "\n\n{bad json\n", encoding="utf-8")
    read = read_manifest(path)
    assert [(r.id, r.line) for r in read.rows] == [("first", 1)]
    assert [(b.line, b.field, b.reason) for b in read.bad] == [
        (2, "row", "must be a JSON object"),
        (3, "category", "missing"),
        (4, "rationale", "must be text"),
        (6, "row", "not valid JSON: Expecting property name enclosed in double quotes"),
    ]
    assert read.ignored_columns == ("source",)


def test_bad_csv_rows_carry_their_line_even_after_a_multi_line_field(tmp_path: Path) -> None:
    text = (
        "Image,Rating,Category,Rationale,Notes\n"
        'a.jpg,Safe,NA,"two\nlines",\n'  # lines 2-3
        "b.jpg,Unsafe,NA,,\n"  # line 4
        "\n"
        "c.jpg,Risky,O1,,\n"  # line 6
        "d.jpg,Safe,O10,,\n"  # line 7
        "s3://nokey,Safe,O1,,\n"  # line 8
        "a.jpg,Safe,O1,,\n"  # line 9: the image of line 2
        "e.jpg,Safe\n"  # line 10
        ",Safe,O1,,\n"  # line 11
    )
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    read = read_manifest(path)
    assert [r.line for r in read.rows] == [2]
    assert read.rows[0].rationale == "two\nlines"
    assert [b.message(path) for b in read.bad] == [
        f"{path}:4: category: an Unsafe image needs a category O1..O9, not NA",
        f"{path}:6: rating: must be Safe or Unsafe, got 'Risky'",
        f"{path}:7: category: unknown category 'O10' (use O1, O2, O3, O4, O5, O6, O7, O8, O9, NA)",
        f"{path}:8: image: not an s3://bucket/key URI: 's3://nokey'",
        f"{path}:9: image: same image as line 2",
        f"{path}:10: row: 2 fields, the header has 5",
        f"{path}:11: image: missing",
    ]
    assert read.ignored_columns == ("notes",)


def test_a_manifest_without_a_required_column_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,label\na.jpg,Safe\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"m\.csv:1: the header lacks rating, category"):
        read_manifest(path)


# -- splitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("0.8,0.1,0.1", (0.8, 0.1, 0.1)), ("0,0,1", (0.0, 0.0, 1.0))]
)
def test_split_shares(text: str, expected: tuple[float, float, float]) -> None:
    assert parse_split(text) == expected


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.5,0.5", "a,b,c", "1.2,-0.1,-0.1", "nan,0,1"])
def test_bad_split_shares_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--split"):
        parse_split(text)


def test_every_stratum_and_the_whole_follow_the_shares() -> None:
    rng = random.Random(3)
    items = [(n, rng.choice("ABCDEFG"), rng.choice("SU")) for n in range(997)]
    ratios = (0.7, 0.2, 0.1)
    parts = stratified_split(items, lambda i: (i[1], i[2]), ratios, random.Random(1))
    assert sorted(i for part in parts for i in part) == items  # each item exactly once
    for share, part in zip(ratios, parts, strict=True):
        assert abs(len(part) - share * len(items)) <= 1
        assert part == sorted(part)  # input order kept
        strata = Counter((i[1], i[2]) for i in items)
        got = Counter((i[1], i[2]) for i in part)
        for stratum, n in strata.items():
            assert abs(got[stratum] - share * n) < 2, (stratum, share)


def test_splits_are_seeded() -> None:
    items = list(range(200))

    def split(seed: int) -> list[list[int]]:
        return stratified_split(items, lambda i: i % 4, (0.5, 0.25, 0.25), random.Random(seed))

    assert split(5) == split(5)
    assert split(5) != split(6)


# -- augmentation ------------------------------------------------------------------------------


def test_the_three_rules(policies: Path) -> None:
    variants = Variants(compiled(policies, "default"), "default")
    unsafe = augment(sample("u", "Unsafe", O2, "a fight"), variants, random.Random(0))
    assert [(s.id, s.augmented, s.rating, s.category) for s in unsafe] == [
        ("u_allowed", VIOLATED_ALLOWED, "Safe", O2),
        ("u_other_allowed", OTHER_ALLOWED, "Unsafe", O2),
    ]
    allowed, others = unsafe
    assert allowed.policy == "default+O2:allowed"
    assert allowed.rationale is None  # it argued for Unsafe
    assert others.rationale == "a fight"  # the label stands
    assert others.policy is not None and "O2" not in others.policy
    changed = others.policy.removeprefix("default+").split(",")
    assert 1 <= len(changed) <= 3 and all(c.endswith(":allowed") for c in changed)
    (sensitive,) = augment(sample("s", "Safe", O2), variants, random.Random(0))
    assert (sensitive.id, sensitive.augmented, sensitive.rating) == (
        "s_sensitive",
        SAFE_SENSITIVE,
        "Unsafe",
    )
    assert sensitive.policy == "default+O2:sensitive"
    assert augment(sample("n", "Safe", NA), variants, random.Random(0)) == []


def test_prompts_are_the_services_compiled_prompts(policies: Path) -> None:
    variants = Variants(compiled(policies, "default"), "default")
    base = original(sample("u", "Unsafe", O2), variants)
    assert base.prompt == compiled(policies, "default").prompt
    assert (base.policy, base.augmented, base.rating) == ("default", None, "Unsafe")
    made = augment(sample("u", "Unsafe", O2), variants, random.Random(0))
    made += augment(sample("s", "Safe", O2), variants, random.Random(0))
    by_rule = {s.augmented: s for s in made}
    for rule, tenant in ((VIOLATED_ALLOWED, "o2allowed"), (SAFE_SENSITIVE, "o2sensitive")):
        service = compiled(policies, tenant)
        assert by_rule[rule].prompt == service.prompt
        variant = next(v for v in variants.made() if v.name == by_rule[rule].policy)
        # The variant decides like the policy file that makes the same change.
        table = decision_table_json(variant.policy.resolved)
        assert table == decision_table_json(service.resolved)


def test_the_base_policy_decides_the_originals_labels(policies: Path) -> None:
    variants = Variants(compiled(policies, "artsy"), "artsy")  # O4 allowed, O2 sensitive
    nude = original(sample("n", "Unsafe", O4, "nude"), variants)
    fight = original(sample("f", "Safe", O2, "news"), variants)
    assert (nude.rating, nude.rationale, fight.rating, fight.rationale) == (
        "Safe",
        None,
        "Unsafe",
        None,
    )
    assert nude.prompt == compiled(policies, "artsy").prompt
    # Already allowed / already sensitive under the base: the rules have nothing to add.
    assert augment(sample("n", "Unsafe", O4), variants, random.Random(1)) == []
    assert augment(sample("f", "Safe", O2), variants, random.Random(1)) == []


def test_oversampling_fills_the_small_groups_up_to_the_largest() -> None:
    originals = [sample(f"s{n}", "Safe", NA) for n in range(12)]
    originals += [sample(f"u{n}", "Unsafe", O2) for n in range(5)]
    originals += [sample("x", "Unsafe", O4)]
    extra = Sample("u0_allowed", "u0.png", "Safe", O2, augmented=VIOLATED_ALLOWED)
    copies = oversample([*originals, extra], random.Random(0))
    counts = Counter((s.category, s.rating) for s in [*originals, *copies])
    assert counts[(NA, "Safe")] == 12 and counts[(O2, "Unsafe")] == 12
    assert counts[(O4, "Unsafe")] == 10  # at most ten times its own size
    assert all(s.augmented == OVERSAMPLED for s in copies)
    assert not any(s.id.startswith("u0_allowed") for s in copies)  # originals only
    assert len({s.id for s in [*originals, *copies]}) == len(originals) + len(copies)
    # 7 copies of 5 images: one whole round, then 2 chosen at random.
    per_image = Counter(s.id.split("_copy")[0] for s in copies if s.category == O2)
    assert set(per_image) == {f"u{n}" for n in range(5)}
    assert sorted(per_image.values()) == [1, 1, 1, 2, 2]
    assert oversample([*originals, extra], random.Random(0)) == copies


def test_a_variant_stays_in_its_originals_split(policies: Path) -> None:
    originals = [sample(f"u{n}", "Unsafe", O2) for n in range(30)]
    originals += [sample(f"s{n}", "Safe", O2) for n in range(30)]
    variants = Variants(compiled(policies, "default"), "default")
    built = build_splits(originals, variants, BuildOptions(seed=2, augment=True))
    home = {s.id: name for name, part in built.splits.items() for s in part if not s.augmented}
    for name, part in built.splits.items():
        for s in part:
            assert home[s.id.split("_")[0]] == name
    assert built.counts[VIOLATED_ALLOWED] == built.counts[OTHER_ALLOWED] == 30
    assert built.counts[SAFE_SENSITIVE] == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.8,0.2", "--split: expected three shares (train,eval,test) like 0.8,0.1,0.1, got 2 "),
        ("a,b,c", "--split: the shares must be numbers like 0.8,0.1,0.1, got 'a,b,c'"),
        ("0.5,0.6,-0.1", "--split: a share cannot be negative: test -0.1"),
        ("0.5,0.5,0.5", "--split: the shares must add up to 1, not 1.5"),
    ],
)
def test_a_bad_split_says_which_rule_it_breaks(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_split(text)
    assert str(caught.value).startswith(message)


# -- the command -------------------------------------------------------------------------------


def request(tmp_path: Path, path: Path, **options: object) -> BuildRequest:
    return BuildRequest(manifest=path, out=tmp_path / "out", options=BuildOptions(**options))  # type: ignore[arg-type]


def test_a_build_writes_readable_splits_and_a_summary(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, labelled_images(tmp_path, 50))
    settings = load_settings(None, {"policies.dir": policies})
    assert run_build(request(tmp_path, path, augment=True, seed=4), settings) == 0
    out = tmp_path / "out"
    splits = {name: read_dataset(out / f"{name}.json") for name in ("train", "eval", "test")}
    originals = {name: [s for s in part if s.augmented is None] for name, part in splits.items()}
    assert [len(originals[n]) for n in ("train", "eval", "test")] == [40, 5, 5]
    everything = [s for part in splits.values() for s in part]
    assert len({s.id for s in everything}) == len(everything)
    for name, part in splits.items():
        for s in part:
            assert Path(resolve_image(out / f"{name}.json", s.image)).is_file()
    summary = json.loads((out / "build.json").read_text(encoding="utf-8"))
    assert summary["seed"] == 4 and summary["base_policy"] == "default"
    assert summary["counts"]["train"]["samples"] == len(splits["train"])
    assert summary["augmentation"][VIOLATED_ALLOWED] == sum(
        s.augmented == VIOLATED_ALLOWED for s in everything
    )
    assert set(summary["policies"]) == {s.policy for s in everything}
    assert summary["policies"]["default"]["version"] == compiled(policies, "default").version
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["split", "samples", "Safe", "Unsafe", "augmented"]
    assert table[1].split()[:2] == ["train", str(len(splits["train"]))]


def test_the_same_seed_builds_the_same_files(tmp_path: Path, policies: Path) -> None:
    path = manifest(tmp_path, labelled_images(tmp_path, 40))
    settings = load_settings(None, {"policies.dir": policies})

    def build(seed: int, out: str) -> dict[str, str]:
        req = BuildRequest(path, tmp_path / out, BuildOptions(seed=seed, augment=True))
        assert run_build(req, settings) == 0
        return {n: (tmp_path / out / f"{n}.json").read_text() for n in ("train", "eval", "test")}

    assert build(1, "a") == build(1, "b")
    assert build(1, "a") != build(2, "c")


def test_bad_rows_are_listed_with_their_line_and_nothing_is_written(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = labelled_images(tmp_path, 6)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image(tmp_path / "img" / "tiny.png", 99, (20, 10))
    image(tmp_path / "img" / "again.png", 0)  # the same pixels as 0.png
    (tmp_path / "img" / "notes.txt").write_text("hello", encoding="utf-8")
    rows += [
        ("img/broken.png", "Safe", "NA", ""),  # line 8
        ("img/missing.png", "Safe", "NA", ""),  # line 9
        ("img/tiny.png", "Safe", "NA", ""),  # line 10
        ("img/again.png", "Safe", "NA", ""),  # line 11
        ("img/notes.txt", "Safe", "NA", ""),  # line 12
        ("img/3.png", "maybe", "NA", ""),  # line 13
    ]
    path = manifest(tmp_path, rows)
    settings = load_settings(None, {"policies.dir": policies})
    assert run_build(request(tmp_path, path), settings) == 1
    stderr = capsys.readouterr().err.splitlines()
    # The status line counts rows as the list below does: line 13 was bad before any image.
    status = [line for line in stderr if line.startswith("dataset build: checked")][-1]
    assert status.startswith("dataset build: checked 12/12 rows, bad 6, ")
    assert stderr[-1] == f"moderator: 6 bad row(s) in {path}; nothing written " + (
        "(fix them, or --skip-bad to build without them)"
    )
    err = [line for line in stderr if line.startswith(str(path))]
    assert [line.split(": ", 2)[0:2] for line in err] == [
        [f"{path}:8", "image"],
        [f"{path}:9", "image"],
        [f"{path}:10", "image"],
        [f"{path}:11", "image"],
        [f"{path}:12", "image"],
        [f"{path}:13", "rating"],
    ]
    assert "corrupt_image" in err[0]
    assert "object_not_found" in err[1]
    assert "20x10 pixels" in err[2]
    assert "same content as line 2" in err[3]
    assert "unsupported_format" in err[4]
    assert "got 'maybe'" in err[5]
    assert not (tmp_path / "out").exists()
    # --skip-bad: the rest is built and the bad rows are kept in a report.
    req = BuildRequest(path, tmp_path / "out", BuildOptions(), skip_bad=True)
    assert run_build(req, settings) == 0
    lines = (tmp_path / "out" / "bad_rows.jsonl").read_text(encoding="utf-8").splitlines()
    report = [json.loads(line) for line in lines]
    assert [r["line"] for r in report] == [8, 9, 10, 11, 12, 13]
    built = sum(
        len(read_dataset(tmp_path / "out" / f"{n}.json")) for n in ("train", "eval", "test")
    )
    assert built == 6
    summary = json.loads((tmp_path / "out" / "build.json").read_text(encoding="utf-8"))
    assert (summary["rows"], summary["bad_rows"]) == (12, 6)


def test_s3_images_are_read_through_the_object_store(tmp_path: Path, policies: Path) -> None:
    store = InMemoryObjectStore()
    for n in range(3):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 48), (n * 80, 10, 10)).save(buffer, "JPEG")
        store.put("uploads", f"acme/{n}.jpg", buffer.getvalue())
    rows = [(f"s3://uploads/acme/{n}.jpg", "Safe", "NA", "") for n in range(4)]
    path = manifest(tmp_path, rows)
    settings = load_settings(None, {"policies.dir": policies})
    req = BuildRequest(path, tmp_path / "out", BuildOptions(ratios=(1.0, 0.0, 0.0)), skip_bad=True)
    assert run_build(req, settings, s3=lambda: store) == 0
    train = read_dataset(tmp_path / "out" / "train.json")
    assert sorted(s.image for s in train) == [f"s3://uploads/acme/{n}.jpg" for n in range(3)]
    report = (tmp_path / "out" / "bad_rows.jsonl").read_text(encoding="utf-8")
    assert json.loads(report)["line"] == 5 and "object_not_found" in report


def test_the_command_line(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, labelled_images(tmp_path, 10))
    out = tmp_path / "data"
    base = ["dataset", "build", str(path), "--out", str(out), "--policies", str(policies)]
    assert main([*base, "--split", "0.5,0.5"]) == 2
    assert "--split: expected three shares" in capsys.readouterr().err
    assert main([*base, "--tenant", "nobody"]) == 2
    assert "--tenant: no policy file for nobody" in capsys.readouterr().err
    assert main(["dataset", "build", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "MANIFEST:" in capsys.readouterr().err
    assert main([*base, "--tenant", "artsy", "--augment", "--oversample", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("split")
    train = read_dataset(out / "train.json")
    assert {s.prompt for s in train if s.augmented is None} == {compiled(policies, "artsy").prompt}


def test_the_command_lines_default_min_side_is_the_builds() -> None:
    from moderator.cli.dataset import DEFAULT_MIN_SIDE
    from moderator.training.build_run import DEFAULT_MIN_SIDE as BUILD_DEFAULT

    assert (
        DEFAULT_MIN_SIDE
        == BUILD_DEFAULT
        == BuildRequest(Path("m"), Path("o"), BuildOptions()).min_side
    )


def test_an_empty_split_is_named_in_a_warning(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, labelled_images(tmp_path, 10))
    settings = load_settings(None, {"policies.dir": policies})
    assert run_build(request(tmp_path, path, ratios=(0.0, 0.0, 1.0)), settings) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "moderator: warning: the train and eval splits are empty (train.json, eval.json written "
        "without samples): a larger --split share or more rows fills them"
    )
    assert read_dataset(tmp_path / "out" / "eval.json") == []
    assert run_build(request(tmp_path, path, ratios=(0.5, 0.0, 0.5)), settings) == 0
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith("moderator: warning: the eval split is empty (eval.json written")
    )
    assert run_build(request(tmp_path, path), settings) == 0
    assert "empty" not in capsys.readouterr().err


def test_an_out_under_a_file_is_refused_before_the_rows_are_checked(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, labelled_images(tmp_path, 4))
    (tmp_path / "train.json").write_text("[]")
    base = ["dataset", "build", str(path), "--policies", str(policies)]
    assert main([*base, "--out", str(tmp_path / "train.json" / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"moderator: --out: cannot create {tmp_path / 'train.json' / 'x'}: "
        f"{tmp_path / 'train.json'} is not a directory\n"
    )
