"""Run a sweep: worlds in chunks through ONE jit-compiled, vmapped, sharded program.

Mesh axes: "data" splits the B worlds of a chunk over devices; "model" (optional) shards the
parameters over heads and MLP width (tensor parallel). Multi-host: the chunks still to do are dealt
out in rounds (chunk ``todo[r * n + p]`` to process p in round r), each process runs its chunk on its
local devices, ``multihost_utils.process_allgather`` brings the round's results to every process and
process 0 checkpoints them (orbax writes host arrays from process 0 only); after a barrier
(``multihost_utils.sync_global_devices``) process 0 merges. Finished chunks are orbax checkpoints,
so a killed sweep started again with the same command resumes and ends with the same results.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tempo_jax.config import ModelConfig
from tempo_jax.engine.config import StaticSpec
from tempo_jax.engine.inputs import EngineInputs, stack
from tempo_jax.engine.outputs import StepRecords
from tempo_jax.engine.run import run_on_device
from tempo_jax.interventions import Interventions
from tempo_jax.model import is_unstacked
from tempo_jax.sweeps import store
from tempo_jax.sweeps.spec import AXES, Grid, SweepSpec, expand, tokenize_prompts


# --- mesh and shardings ------------------------------------------------------------------------
def build_mesh(devices=None, data: int | None = None, model: int = 1) -> Mesh:
    """A ("data", "model") mesh over ``devices`` (default: this process's local devices)."""
    devices = list(devices if devices is not None else jax.local_devices())
    if model < 1 or len(devices) % model:
        raise ValueError(f"mesh model axis {model} does not divide the {len(devices)} devices")
    data = data or len(devices) // model
    if data * model > len(devices):
        raise ValueError(f"mesh {data} x {model} needs {data * model} devices, have {len(devices)}")
    return Mesh(np.asarray(devices[:data * model]).reshape(data, model), ("data", "model"))


def param_partition(params, mcfg: ModelConfig, model_size: int):
    """PartitionSpecs of the parameter pytree, either layout: heads and MLP width over "model" (when
    divisible)."""
    H, G, F = mcfg.num_heads, mcfg.num_kv_heads, mcfg.intermediate_size
    ok = lambda n: model_size > 1 and n % model_size == 0
    m = "model"
    rules = {"wq": P(None, None, m, None) if ok(H) else P(), "bq": P(None, m, None) if ok(H) else P(),
             "wk": P(None, None, m, None) if ok(G) else P(), "bk": P(None, m, None) if ok(G) else P(),
             "wv": P(None, None, m, None) if ok(G) else P(), "bv": P(None, m, None) if ok(G) else P(),
             "wo": P(None, m, None, None) if ok(H) else P(),
             "w_gate": P(None, None, m) if ok(F) else P(), "w_up": P(None, None, m) if ok(F) else P(),
             "w_down": P(None, m, None) if ok(F) else P()}
    layers: Any
    if is_unstacked(params):  # per-layer dicts: the same rules without the L axis; the fused
        # wqkv / w_gate_up stay replicated (their columns are q|k|v and gate|up, not whole heads)
        per = {n: P(*r[1:]) if len(r) else P() for n, r in rules.items()}
        layers = tuple({n: per.get(n, P()) for n in lp} for lp in params["layers"])
    else:
        layers = {n: rules.get(n, P()) for n in params["layers"]}
    return {k: (layers if k == "layers" else P()) for k in params}


def world_outputs(st, records: StepRecords) -> dict:
    """The per-world record kept from a final TempoState (drops the cache and K-slot maps), plus
    the per-step ``[S,L,H]`` attention records of ``run_on_device(..., record=True)``."""
    safe = jnp.clip(st.slots, 0)
    in_cache = st.slots >= 0
    return {"tokens": st.tokens, "probs": st.probs, "valid": st.valid, "positions": st.positions,
            "pruned_at": jnp.where(in_cache, st.pruned_at[safe], -1),
            "prune_score": jnp.where(in_cache, st.prune_score[safe], jnp.nan),
            "tau": st.tau, "entropy": st.entropy, "set_n": st.set_n, "n_steps": st.step,
            "n_written": st.n_written, **records.arrays()}


def make_program(mcfg: ModelConfig, static: StaticSpec, capacity: int, mesh: Mesh, params):
    """(jitted fn(params, data, prompt[B,Pb], plen[B]) -> outputs with leading B, params placed)."""
    pspec = param_partition(params, mcfg, mesh.shape["model"])
    psh = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), pspec,
                                 is_leaf=lambda x: isinstance(x, P))
    key = (mcfg, static, capacity, mesh, jax.tree_util.tree_structure(params))
    if key not in _PROGRAMS:  # one jitted function per setting: a later sweep of the same shapes reuses
        # its compiled program instead of tracing a fresh closure (a sweep per prompt, rq6.1d)
        dsh = NamedSharding(mesh, P("data"))

        def fn(params, data, prompt, plen):
            one = lambda d, p, n: world_outputs(*run_on_device(params, mcfg, static, d, p, n, capacity,
                                                               record=True, fit_width=False))
            return jax.vmap(one)(data, prompt, plen)

        if len(_PROGRAMS) >= 8:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = jax.jit(fn, in_shardings=(psh, dsh, dsh, dsh), out_shardings=dsh)
    return _PROGRAMS[key], jax.device_put(params, psh)


_PROGRAMS: dict = {}  # make_program's jitted functions, oldest first (at most 8)


# --- world inputs ------------------------------------------------------------------------------
@dataclasses.dataclass
class WorldInputs:
    """Builds the batched array inputs of any list of worlds (B worlds, L layers, H heads)."""

    grid: Grid
    mcfg: ModelConfig

    def __post_init__(self):
        longest = max(len(p) for p in self.grid.prompt_ids)
        self.bucket = self.grid.base.bucketed(longest)  # Pb, common to all worlds
        self.capacity = self.grid.base.capacity_for(longest)  # K, common to all worlds
        self._data_cache: dict = {}

    def _data(self, t, sib, pos, seed) -> EngineInputs:
        key = (t, sib, pos, seed)
        if key not in self._data_cache:
            g = dataclasses.replace(self.grid.base, threshold=t, siblings=sib, positions=pos, seed=seed)
            self._data_cache[key] = jax.tree_util.tree_map(np.asarray, g.inputs(self.mcfg))
        return self._data_cache[key]

    def batch(self, worlds: np.ndarray):
        """``worlds[B]`` (-1 = padding, filled with world 0) -> (data, prompt[B,Pb], plen[B])."""
        L, H = self.mcfg.num_layers, self.mcfg.num_heads
        c = self.grid.coords
        datas, prompts, plens, scales = [], [], [], []
        for b in worlds:
            ix = self.grid.index(max(int(b), 0))
            datas.append(self._data(c["threshold"][ix["threshold"]], c["siblings"][ix["siblings"]],
                                    c["positions"][ix["positions"]], c["seed"][ix["seed"]]))
            ids = self.grid.prompt_ids[ix["prompt"]]
            prompts.append(np.pad(np.asarray(ids, np.int32), (0, self.bucket - len(ids))))
            plens.append(len(ids))
            sc = np.ones((L, H), np.float32)
            for l, h in self.grid.heads[ix["heads"]]:
                sc[l, h] = 0.0
            scales.append(sc)
        data = stack(datas).replace(interventions=Interventions(head_scale=jnp.asarray(np.stack(scales))))
        return data, np.stack(prompts), np.asarray(plens, np.int32)


# --- the sweep ---------------------------------------------------------------------------------
def grid_meta(spec: SweepSpec, grid: Grid, model_name: str) -> dict:
    return {"digest": spec.digest(), "spec": spec.normalised(), "axes": list(AXES),
            "shape": list(grid.shape), "coords": grid.coords, "model": model_name}


def run_sweep(spec: SweepSpec, out, model=None, devices=None, progress: bool = True,
              on_chunk: Callable[[int, dict], None] | None = None):
    """Run (or resume) ``spec`` into ``out``; returns the merged :class:`store.SweepResults` on
    process 0 (None elsewhere). ``model``: a LoadedModel (default: ``load_model(spec.model)``).
    ``on_chunk(i, outputs)`` is called after chunk i is checkpointed (results streaming out).
    """
    from tqdm.auto import tqdm

    out = Path(out).absolute()
    if model is None:
        from tempo_jax.loading import load_model

        model = load_model(spec.model, verbose=progress)
    mcfg, params = model.cfg, model.params
    grid = expand(spec, mcfg, tokenize_prompts(spec, model.tokenizer))  # every check, no compute
    mesh = build_mesh(devices, spec.mesh.get("data"), spec.mesh.get("model", 1) or 1)
    n_data = mesh.shape["data"]
    if spec.chunk % n_data:
        raise ValueError(f"chunk {spec.chunk} must be a multiple of the mesh's data axis ({n_data} "
                         f"devices)")
    pid, nproc = jax.process_index(), jax.process_count()
    meta = grid_meta(spec, grid, getattr(model, "source", mcfg.name))
    store.claim_dir(out, meta, write=pid == 0)
    inputs = WorldInputs(grid, mcfg)
    n_worlds, chunk = grid.n_worlds, spec.chunk
    n_chunks = math.ceil(n_worlds / chunk)
    done = np.asarray([store.chunk_done(out, i) for i in range(n_chunks)])
    if nproc > 1:  # process 0's view of the directory decides
        from jax.experimental import multihost_utils

        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    todo = [i for i in range(n_chunks) if not done[i]]
    if todo:
        if pid == 0:
            store.clear_partial(out)
        prog, placed = make_program(mcfg, grid.base.static(), inputs.capacity, mesh, params)
        bar = tqdm(total=n_chunks, initial=n_chunks - len(todo), unit="chunk", disable=not progress,
                   desc="sweep")
        # round r: process p runs todo[r * nproc + p] on its local devices; process 0 gathers
        # the round's results (multihost_utils.process_allgather) and checkpoints every chunk
        for r in range(math.ceil(len(todo) / nproc)):
            round_chunks = todo[r * nproc:(r + 1) * nproc]
            i = round_chunks[pid] if pid < len(round_chunks) else None
            worlds = np.arange(i * chunk, (i + 1) * chunk) if i is not None else np.full(chunk, -1)
            worlds = np.where(worlds < n_worlds, worlds, -1)
            data, prompt, plen = inputs.batch(worlds)
            if i is not None:
                res = jax.device_get(prog(placed, data, prompt, plen))
            else:  # idle this round: zeros of the right shapes (worlds all -1, dropped at merge)
                shapes = jax.eval_shape(prog, placed, data, prompt, plen)
                res = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
            res = {"world": worlds, **{k: np.asarray(v) for k, v in res.items()}}
            if nproc > 1:
                gathered = multihost_utils.process_allgather(res)  # leaves [nproc, B, ...]
                results = [{k: np.asarray(v[q]) for k, v in gathered.items()}
                           for q in range(len(round_chunks))]
            else:
                results = [res]
            for c, rc in zip(round_chunks, results):
                if pid == 0:
                    store.save_chunk(out, c, rc, pid)
                bar.update(1)
                if on_chunk is not None:
                    on_chunk(c, rc)
        bar.close()
    if nproc > 1:
        multihost_utils.sync_global_devices("tempo_jax_sweep_chunks_done")
    if pid != 0:
        return None
    missing = [i for i in range(n_chunks) if not store.chunk_done(out, i)]
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} are missing after every process finished")
    t0 = time.perf_counter()
    res = store.merge(out, meta, n_chunks, chunk, n_worlds, pid)
    if progress:
        print(f"merged {n_worlds} worlds in {time.perf_counter() - t0:.1f}s -> {out / 'results.npz'}, "
              f"{out / 'summary.md'}")
    return res


def main(spec_path, out, model: str | None = None, coordinator: str | None = None,
         num_processes: int = 1, process_id: int = 0, progress: bool = True):
    """Entry point (CLI ``tempo-jax sweep``): parse the spec, start the distributed runtime when
    ``num_processes > 1`` (CPU: gloo collectives), run."""
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"--num-processes must be >= 1 and --process-id in 0..num_processes-1, got "
                         f"{num_processes} and {process_id}")
    spec = SweepSpec.from_yaml(spec_path)
    if model is not None:
        spec = dataclasses.replace(spec, model=model)
    if num_processes > 1:
        if coordinator is None:
            raise ValueError("a multi-process sweep needs --coordinator HOST:PORT")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    return run_sweep(spec, out, progress=progress)
