"""What an experiment declares and returns: :class:`Design` (decided before anything runs, with
its :class:`Hypothesis` tests), :class:`Context` (what ``run`` gets), :class:`Output` (what it
returns) and :class:`TestResult` (one computed test)."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable

from tempo_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One declared test, or a family of them when ``column`` is a glob over row columns.

    ``column``: the per-prompt paired statistic (e.g. a log ratio of condition B to condition A);
    ``expect``: the predicted direction, "<0", ">0" or "=0" (equivalence within the margin).
    """

    name: str
    statement: str
    column: str
    expect: str
    family: str = "primary"
    margin: float | None = None  # overrides the design's margin for this hypothesis
    sesoi: float | None = None  # smallest effect of interest, column units (None: the margin); power
    bound: float | None = None  # largest possible |difference| of one prompt (1: 0/1 outcomes, shares);
    # the equivalence test of differences identical on every prompt needs it (stats.tost)


@dataclasses.dataclass(frozen=True)
class Design:
    """Everything decided before the experiment runs."""

    id: str
    questions: tuple[str, ...]
    title: str
    primary_metric: str
    contrast: str
    hypotheses: tuple[Hypothesis, ...]
    margin: float  # equivalence margin, in the units of the hypotheses' columns
    margin_note: str
    metrics: tuple[str, ...]  # every column (or glob) the rows carry and the tests may name
    families: dict = dataclasses.field(default_factory=lambda: {"primary": "holm"})
    unit: str = "prompt"
    alpha: float = 0.05
    split: str = "test"
    genres: tuple[str, ...] = ("prose", "code", "facts")
    n_per_genre: int | None = None  # None: every prompt of the split
    quick_n: int = 2  # per genre, for --quick
    seed: int = 0
    caveats: tuple[str, ...] = ()
    config: dict = dataclasses.field(default_factory=dict)  # experiment parameters (recorded)
    exploratory: bool = False  # a confirmatory-split design below its powered n runs only if declared so

    def check(self) -> None:
        """One-line ValueErrors for a malformed design (before any compute)."""
        for h in self.hypotheses:
            if not any(fnmatch.fnmatchcase(h.column, m) or h.column == m for m in self.metrics):
                raise UsageError(f"{self.id}: hypothesis {h.name} names unknown metric {h.column!r}; "
                                 f"declared: {', '.join(self.metrics)}")
            if h.expect not in ("<0", ">0", "=0"):
                raise UsageError(f"{self.id}: hypothesis {h.name} expect must be <0, >0 or =0")
            if h.family not in self.families:
                raise UsageError(f"{self.id}: hypothesis {h.name} is in undeclared family {h.family!r}")
        for fam, method in self.families.items():
            if method not in ("holm", "fdr_bh"):
                raise UsageError(f"{self.id}: family {fam} has unknown correction {method!r}")
        if not self.margin > 0:
            raise UsageError(f"{self.id}: the equivalence margin must be > 0")


@dataclasses.dataclass
class TestResult:
    """One test's statistics (p values before and after correction)."""

    hypothesis: str
    column: str
    family: str
    expect: str
    n: int
    estimate: float
    lo: float
    hi: float
    p: float
    p_tost: float
    d_z: float = float("nan")
    p_adj: float = float("nan")
    p_tost_adj: float = float("nan")
    verdict: str = ""
    margin: float = float("nan")
    note: str = ""
    post_hoc: bool = False  # added to the registration after a confirmatory result was seen


@dataclasses.dataclass
class Output:
    """What ``run`` returns: per-prompt rows (dicts with ``prompt_id``, ``genre`` and the declared
    metric columns), optional precomputed tests, extra tables (name -> rows) and figure paths."""

    rows: list[dict]
    tests: list[TestResult] = dataclasses.field(default_factory=list)
    tables: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Context:
    """What ``run`` gets: the prompts, a lazily loaded model, seed, quick flag, the folder for
    figures, and a progress wrapper."""

    design: Design
    prompts: list
    out_dir: Path
    seed: int
    quick: bool
    model_spec: str | None = None
    _model: Any = None

    @property
    def model(self):
        if self._model is None:
            from tempo_jax.loading import load_model

            self._model = load_model(self.model_spec, verbose=False)
        return self._model

    def progress(self, it: Iterable, desc: str = "", total: int | None = None):
        from tqdm.auto import tqdm

        return tqdm(it, desc=f"{self.design.id} {desc}".strip(), total=total, leave=False)

    cache_dir: Path | None = None
    _scorer: Any = None

    @property
    def scorer(self):
        """A model of the OTHER family than the one under test, for cross-model quality measures
        (``quality.cross_perplexity``): Gemma 3 270M scores the Llama family's text and SmolLM2-135M
        scores Gemma's; loaded on first use."""
        if self._scorer is None:
            from tempo_jax.loading import load_model

            other = "smollm2-135m" if self.model.cfg.family == "gemma3" else "gemma3-270m"
            self._scorer = load_model(other, verbose=False)
        return self._scorer

    def map(self, fn: Callable, desc: str = "prompts"):
        """``(prompt, fn(prompt))`` for every prompt, with progress. Each result is cached on disk
        (keyed by experiment, model params, seed, design config and prompt id) as it is computed,
        so an interrupted run resumes where it stopped instead of computing everything again."""
        import pickle

        for p in self.progress(self.prompts, desc):
            path = self._cache_path(p)
            if path is not None and path.exists():
                yield p, pickle.loads(path.read_bytes())
                continue
            r = fn(p)
            self._store(p, r)
            yield p, r

    def _cache_path(self, p) -> Path | None:
        """Where prompt ``p``'s result is cached (None: no cache)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(p.id.encode()).hexdigest()[:20] + ".pkl")

    def _store(self, p, r) -> None:
        """Cache result ``r`` of prompt ``p`` atomically (a temporary file renamed)."""
        import pickle

        path = self._cache_path(p)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(r))
        tmp.replace(path)

    def map_batched(self, fn_batch: Callable, batch: int = 8, desc: str = "prompts"):
        """Like :meth:`map`, but the prompts not yet cached are computed ``batch`` at a time by
        ``fn_batch(list of prompts) -> list of results`` (one compiled program over a batch axis);
        each result is cached as its batch finishes, and pairs come out in prompt order."""
        import pickle

        from tqdm.auto import tqdm

        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        missing = object()

        results: list = []
        pending: list[int] = []

        def run_pending():
            got = fn_batch([self.prompts[i] for i in pending])
            if len(got) != len(pending):
                raise ValueError(f"fn_batch returned {len(got)} results for {len(pending)} prompts")
            for i, r in zip(pending, got):
                results[i] = r
                self._store(self.prompts[i], r)
            pending.clear()

        bar = tqdm(total=len(self.prompts), desc=f"{self.design.id} {desc}".strip(), leave=False)
        nxt = 0  # the next prompt to hand out
        for i, p in enumerate(self.prompts):
            path = self._cache_path(p)
            if path is not None and path.exists():
                results.append(pickle.loads(path.read_bytes()))
            else:
                results.append(missing)
                pending.append(i)
            if len(pending) == batch or (i == len(self.prompts) - 1 and pending):
                run_pending()
            while nxt <= i and results[nxt] is not missing:
                bar.update(1)
                yield self.prompts[nxt], results[nxt]
                nxt += 1
        bar.close()

    def figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as ``fig_<name>.png`` in the results folder and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"fig_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path


def quality_of(m, prompt, trace, scorer=None) -> dict[str, float]:
    """:func:`tempo_jax.quality.measure` of a corpus prompt's trace under loaded model ``m``
    (references, aliases and genre from the corpus record; EOS ids from the model); with
    ``scorer`` (``Context.scorer``: another family) the cross-model measures too."""
    from tempo_jax import quality

    return quality.measure(trace, genre=prompt.genre, reference=prompt.reference,
                           aliases=prompt.aliases, tokenizer=m.tokenizer, prompt_text=prompt.prompt,
                           params=m.params, cfg=m.cfg, eos_ids=m.cfg.eos_token_ids or (), scorer=scorer)
