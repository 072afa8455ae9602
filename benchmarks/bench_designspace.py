"""Benchmark of the vectorised batch simulator and of ``twin designspace``'s engines.

    .venv/bin/python benchmarks/bench_designspace.py [--quick]

1. Batches per second per core, a 10 h batch (jacket ramp 25 -> plateau in 1 h, hold), CQAs only
   (yield and impurity at the end, peak T on the 60 s grid), each batch with its own k1, E2, UA,
   charge and plateau: ``Twin.simulate`` + ``analysis.summarize`` in a loop (the baseline) against
   ``batch_sim.simulate_batches`` on one array of batches. CPU time of this process (numpy runs the
   elementwise work on one thread), so the figures are per core. Goal: >= 50x and >= 8,000 batches/s/core.
   The same with the learned correction in every stage (dist/correction.onnx, when present).
2. 10^5 batches of a design space (10 x 10 grid x 1,000) in-process: wall time (goal <= 20 s).
3. Dask LocalCluster on 127.0.0.1 with 1 and 2 worker processes on the same study: wall times,
   speed-up and scaling efficiency; the projected cost of a 10^7-batch study on N cores from the
   measured per-core rate.
4. Memory: peak traced allocation of one call of 10^5 batches, and of one default chunk (20,000).

The machine has 2 cores shared with other jobs: wall-clock figures are noisy, ratios measured in
the same run are what to compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

from twin_core import analysis
from twin_core.batch_sim import Programme, coefficients_from_arrays, cqas, simulate_batches
from twin_core.offline import designspace as ds
from twin_core.params import ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Twin

C0 = 273.15
T_END = 10 * 3600.0


def sample(B: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"k1": 1.85e-4 * np.exp(rng.normal(0, 0.05, B)), "E2": 100e3 * (1 + rng.normal(0, 0.02, B)),
            "UA": 1500 * rng.uniform(0.7, 1.0, B), "cA0": 1000 * (1 + rng.normal(0, 0.02, B)),
            "T0": 298.15 + rng.normal(0, 2, B), "plateau": C0 + rng.uniform(55, 75, B)}


def loop_rate(n: int) -> tuple[float, float]:
    s = sample(n)
    base = ModelParams()
    t0c, t0w = time.process_time(), time.perf_counter()
    for i in range(n):
        p = base.replace(k1_ref_per_s=float(s["k1"][i]), E2_J_per_mol=float(s["E2"][i]), UA_W_per_K=float(s["UA"][i]),
                         c_A0_mol_per_m3=float(s["cA0"][i]), T0_K=float(s["T0"][i]))
        tr = Twin(p).simulate(Recipe((0.0, 3600.0), (C0 + 25.0, float(s["plateau"][i])), T_END))
        analysis.summarize(tr, p)
    return n / (time.process_time() - t0c), n / (time.perf_counter() - t0w)


def vector_inputs(B: int) -> tuple:
    s = sample(B)
    c = coefficients_from_arrays(ModelParams(), k1_ref_per_s=s["k1"], E2_J_per_mol=s["E2"], UA_W_per_K=s["UA"])
    x0 = np.column_stack([s["cA0"], np.zeros(B), np.zeros(B), s["T0"]])
    prog = Programme.ramp_hold(np.full(B, C0 + 25.0), s["plateau"], np.full(B, 3600.0), np.full(B, T_END))
    return c, x0, prog


def vector_rate(B: int, correction=None) -> tuple[float, float]:
    c, x0, prog = vector_inputs(B)
    t0c, t0w = time.process_time(), time.perf_counter()
    res = simulate_batches(c, x0, prog, correction=correction)
    cqas(res, x0)
    return B / (time.process_time() - t0c), B / (time.perf_counter() - t0w)


def peak_memory(B: int) -> float:
    c, x0, prog = vector_inputs(B)
    tracemalloc.start()
    simulate_batches(c, x0, prog)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args()
    q = args.quick
    print(f"bench_designspace: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f} "
          "(the CPU is shared with other jobs: figures are noisy)")

    n_loop, n_vec = (30, 4000) if q else (200, 20000)
    loop_cpu, loop_wall = loop_rate(n_loop)
    vec_cpu, vec_wall = vector_rate(n_vec)
    print("\n1. 10 h batch, CQAs only (yield, impurity at the end, peak T)")
    print(f"   Twin.simulate loop ({n_loop} batches):     {loop_cpu:10,.0f} batches/s/core (CPU time)  "
          f"{loop_wall:10,.0f} batches/s wall")
    print(f"   simulate_batches ({n_vec} batches):    {vec_cpu:10,.0f} batches/s/core (CPU time)  "
          f"{vec_wall:10,.0f} batches/s wall")
    print(f"   ratio: {vec_cpu / loop_cpu:.1f}x per core (goal >= 50x)    "
          f"goal >= 8,000 batches/s/core: {'MET' if vec_cpu >= 8000 else 'MISSED'}")
    onnx = Path("dist/correction.onnx")
    if onnx.exists():
        from ml_onnx.runtime import OnnxCorrection

        corr = ds.VectorisedCorrection(OnnxCorrection(onnx))
        n_h = 2000 if q else 10000
        h_cpu, _ = vector_rate(n_h, corr)
        print(f"   with the learned correction in every stage ({n_h} batches, onnxruntime on the whole working set): "
              f"{h_cpu:,.0f} batches/s/core")

    print("\n2. Design space in-process (10 x 10 grid)")
    n_mc = 100 if q else 1000
    cfg = dataclasses.replace(ds.quick_config(n_mc=n_mc, num=10), name="bench")
    t0 = time.perf_counter()
    res = ds.run_designspace(cfg)
    wall = time.perf_counter() - t0
    print(f"   {res.n_batches:,} batches in {wall:.1f} s wall ({res.n_batches / wall:,.0f} batches/s; "
          f"goal 10^5 in <= 20 s: {'MET' if res.n_batches >= 100_000 and wall <= 20 else 'MISSED' if res.n_batches >= 100_000 else 'n/a (--quick)'})")

    print("\n3. Dask LocalCluster on 127.0.0.1 (worker processes, 1 thread each)")
    from distributed import Client, LocalCluster

    cfg_d = dataclasses.replace(cfg, n_mc=n_mc // 2, chunk_size=2500 if not q else 500)
    walls = {}
    ref = None
    for n in (1, 2):
        t0 = time.perf_counter()
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.wait_for_workers(n)
            start = time.perf_counter() - t0
            ds.run_designspace(dataclasses.replace(cfg_d, n_mc=2), engine="dask", scheduler=cluster.scheduler_address)
            t1 = time.perf_counter()
            r = ds.run_designspace(cfg_d, engine="dask", scheduler=cluster.scheduler_address)
            walls[n] = time.perf_counter() - t1
        ref = r.table if ref is None else ref
        same = "the reference" if n == 1 else ("identical to 1 worker" if r.table == ref else "DIFFERENT from 1 worker")
        print(f"   {n} worker(s): {r.n_batches:,} batches in {walls[n]:.1f} s wall after warm-up "
              f"({r.n_batches / walls[n]:,.0f} batches/s; cluster start {start:.1f} s); {same}")
    sp = walls[1] / walls[2]
    print(f"   speed-up 1 -> 2 workers: {sp:.2f}x, scaling efficiency {100 * sp / 2:.0f} % "
          "(2 cores shared with other jobs)")
    print(f"   projected 10^7-batch study at the measured {vec_cpu:,.0f} batches/s/core:")
    for cores in (2, 16, 64, 256):
        ideal = 1e7 / (vec_cpu * cores)
        print(f"     {cores:>4} cores: {ideal:8.1f} s ideal, {ideal / max(min(sp / 2, 1.0), 0.1):8.1f} s at the "
              f"measured 2-worker efficiency (chunks of 20,000: {1e7 / 20000 / cores:.0f} per core)")

    print("\n4. Memory")
    n_mem = 20000 if q else 100000
    m_all = peak_memory(n_mem)
    m_chunk = peak_memory(min(20000, n_mem))
    print(f"   peak traced allocation: {m_all:.0f} MiB for {n_mem:,} batches in one call "
          f"({m_all * 1e5 / n_mem:.0f} MiB per 10^5 batches); {m_chunk:.0f} MiB for one default chunk of 20,000")


if __name__ == "__main__":
    main()
