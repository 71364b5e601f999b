"""The committed research prompt corpus (experiments/corpus): size, splits, provenance, loader.

Reads only the committed files; needs no system package and no network.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter

import pytest
from repo import ROOT as REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import corpus  # noqa: E402
from experiments.corpus import CorpusPrompt, load, load_prompt_file  # noqa: E402

SOURCE_KEYS = ("package", "version", "licence", "file", "rule")


@pytest.fixture(scope="module")
def raw_records() -> list[dict]:
    lines = corpus.CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_size_genres_and_splits(raw_records):
    assert len(raw_records) >= 300
    per = Counter((r["genre"], r["split"]) for r in raw_records)
    genres = {g for g, _ in per}
    assert len(genres) >= 3 and {"prose", "code", "facts"} <= genres
    for g in genres:
        assert per[(g, "test")] >= 50, g
        assert per[(g, "dev")] > 0, g
    assert {r["split"] for r in raw_records} == {"dev", "test"}


def test_ids_unique_and_schema(raw_records):
    ids = [r["id"] for r in raw_records]
    assert len(ids) == len(set(ids))
    keys = {"id", "genre", "relation", "prompt", "reference", "aliases", "split", "source"}
    for r in raw_records:
        assert set(r) == keys, r["id"]
        assert r["id"].startswith(r["genre"] + "/")
        assert r["prompt"].strip() and r["reference"].strip(), r["id"]
        assert (r["relation"] is not None) == (r["genre"] == "facts"), r["id"]


def test_file_is_canonical_and_manifest_matches(raw_records):
    data = corpus.CORPUS_PATH.read_bytes()
    manifest = corpus.manifest()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == corpus.corpus_hash()
    assert manifest["records"] == len(raw_records)
    # one JSON object per line with sorted keys, as the build writes it
    for line, r in zip(data.decode("utf-8").splitlines(), raw_records):
        assert line == json.dumps(r, sort_keys=True, ensure_ascii=False)
    counts = Counter((r["genre"], r["split"]) for r in raw_records)
    for genre, by_split in manifest["counts"].items():
        for split, n in by_split.items():
            assert counts[(genre, split)] == n
    assert manifest["python_version"] and manifest["build_command"]
    for src in manifest["sources"]:
        assert src["package"] and src["version"] and src["licence"]


def test_every_record_has_provenance(raw_records):
    for r in raw_records:
        src = r["source"]
        for key in SOURCE_KEYS:
            assert isinstance(src.get(key), str) and src[key].strip(), (r["id"], key)
        assert not src["file"].startswith("/"), r["id"]  # no machine paths
        if r["genre"] == "prose":  # the fortune file by folder + name, and its item number
            assert src["folder"].strip() and not src["folder"].startswith("/"), r["id"]
            assert "/" not in src["file"] and isinstance(src["item"], int), r["id"]


def test_prose_ids_name_the_fortune_file_by_its_label(raw_records):
    from experiments.corpus.build import PROSE_LABELS

    prose = [r for r in raw_records if r["genre"] == "prose"]
    for r in prose:
        src = r["source"]
        assert r["id"] == f"prose/{PROSE_LABELS.get(src['file'], src['file'])}/{src['item']}"
    relabelled = {r["source"]["file"] for r in prose} & set(PROSE_LABELS)
    assert relabelled, "no prose record comes from a relabelled file: the label test is empty"
    assert not any(f"/{name}/" in r["id"] for r in prose for name in PROSE_LABELS)


def test_facts_have_gold_and_aliases(raw_records):
    facts = [r for r in raw_records if r["genre"] == "facts"]
    assert len({r["relation"] for r in facts}) >= 2
    for r in facts:
        assert r["reference"].strip() == r["reference"] != ""
        assert r["aliases"] and r["aliases"][0] == r["reference"], r["id"]
        assert not r["prompt"].endswith(" ")
    for r in raw_records:
        if r["genre"] != "facts":
            assert r["aliases"] == []


def test_prose_and_code_shapes(raw_records):
    for r in raw_records:
        if r["genre"] == "prose":
            # cut at a word boundary: the continuation starts with the space
            assert not r["prompt"].endswith(" ") and r["reference"].startswith(" ")
            assert 8 <= len(r["prompt"].split()) <= 20
        if r["genre"] == "code":
            assert r["prompt"].startswith(("def ", "async def ")) and r["prompt"].endswith("\n")
            assert len(r["prompt"]) <= 600
            assert r["source"]["package"] == "cpython"


def test_load_filters():
    everything = load()
    assert len(everything) >= 300
    assert all(isinstance(p, CorpusPrompt) for p in everything)
    test = load(split="test")
    dev = load(split="dev")
    assert len(test) + len(dev) == len(everything)
    assert {p.split for p in test} == {"test"}
    facts = load(genres=["facts"])
    assert facts and {p.genre for p in facts} == {"facts"}
    assert load(genres="code") == load(genres=["code"])
    some = load(split="test", genres=["prose", "code"], limit_per_genre=7)
    assert Counter(p.genre for p in some) == {"prose": 7, "code": 7}
    assert some == load(split="test", genres=["prose", "code"], limit_per_genre=7)
    # order follows the file
    order = {p.id: i for i, p in enumerate(everything)}
    assert [order[p.id] for p in some] == sorted(order[p.id] for p in some)
    assert load(limit_per_genre=0) == []
    assert hash(everything[0]) == hash(load()[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "train"}, "unknown split 'train'; allowed: dev, test"),
        ({"genres": ["poetry"]}, "unknown genre 'poetry'; allowed: prose, code, facts"),
        ({"genres": []}, "genres is empty"),
        ({"limit_per_genre": -1}, "limit_per_genre"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        load(**kwargs)
    assert "\n" not in str(info.value)


def test_load_prompt_file_text(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("The weather today is\n\n   \nOnce upon a time\r\n", encoding="utf-8")
    got = load_prompt_file(f)
    assert [p.prompt for p in got] == ["The weather today is", "Once upon a time"]
    assert {p.genre for p in got} == {"custom"} and {p.reference for p in got} == {""}
    assert len({p.id for p in got}) == 2


def test_load_prompt_file_jsonl(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompt": "The capital of Peru is", "reference": "Lima",
                             "genre": "facts", "aliases": ["Lima"]}) + "\n\n", encoding="utf-8")
    (p,) = load_prompt_file(f)
    assert (p.prompt, p.reference, p.genre, p.aliases) == ("The capital of Peru is", "Lima", "facts", ("Lima",))
    # the corpus file itself is a valid prompt file
    assert load_prompt_file(corpus.CORPUS_PATH) == load()


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_load_prompt_file_without_prompts(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"prompt file .*empty\.txt has no usable prompt: ") as info:
        load_prompt_file(f)
    assert "\n" not in str(info.value)


def test_load_prompt_file_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as info:
        load_prompt_file(tmp_path / "missing.txt")
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_prompt_file(bad)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": "  "}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="has no usable prompt: every record's 'prompt' is empty"):
        load_prompt_file(blank)


def test_confirm_split_is_disjoint_canonical_and_loads_by_name(raw_records):
    """confirm.jsonl: never overlaps dev/test (ids nor prompts), matches its manifest entry, spreads
    code over modules and cities over countries, and is read only when asked for by name."""
    data = corpus.CONFIRM_PATH.read_bytes()
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    entry = corpus.manifest()["confirm"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() == corpus.corpus_hash("confirm")
    assert corpus.corpus_hash() == corpus.corpus_hash("test") != corpus.corpus_hash("confirm")
    assert entry["records"] == len(rows) and {r["split"] for r in rows} == {"confirm"}
    assert dict(Counter(r["genre"] for r in rows)) == entry["counts"]
    assert all(n >= 250 for n in entry["counts"].values())  # room for powered designs per genre
    assert not {r["id"] for r in rows} & {r["id"] for r in raw_records}
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in raw_records}
    assert max(Counter(r["source"]["file"] for r in rows if r["genre"] == "code").values()) <= 3
    assert max(Counter(r["reference"] for r in rows if r["relation"] == "city_country").values()) <= 3
    for r in rows:
        assert all(r["source"].get(k) for k in SOURCE_KEYS), r["id"]
    got = load(split="confirm", genres=["facts"])
    assert len(got) == entry["counts"]["facts"] and {p.split for p in got} == {"confirm"}
    assert {p.split for p in load()} == {"dev", "test"}  # split=None: dev and test only
