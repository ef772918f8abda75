"""From how many labels would LightGBM's own Dask training beat alloop's one-process fit?

alloop trains in the round's process (``tasks.model.fit_booster``, one thread by default,
``train.num_threads``); ``lightgbm.dask.DaskLGBMClassifier`` spreads one fit over the workers
of a Dask cluster, each holding part of the rows. For each training-set size (default 2,000,
20,000, 200,000 and 1,000,000 rows; synthetic, ``--features`` float32 columns, ``--classes``
Gaussian classes) this script times, one after the other in one run:

* ``fit_booster`` with alloop's default ``TrainParams`` (50 rounds, 15 leaves, one thread);
* ``fit_booster`` again with ``train.num_threads`` as many as the workers (the same cores in one
  process);
* ``DaskLGBMClassifier`` with the same settings (one thread per worker), on a
  ``distributed.LocalCluster`` of ``--workers`` single-threaded worker processes started once
  before the timings (its start is not counted), the rows as a dask array in one chunk per
  worker, already persisted on the workers (so the transfer of the rows is not counted either:
  in a real cluster they would be read there).

Both fits see the same rows; their test accuracies on held-out rows are printed beside the
times as a sanity check (Dask's distributed histogram building is not bit-identical).

Usage: ``PYTHONPATH=. python bench/dask_training.py [--sizes 2000,20000,200000,1000000]
[--workers 2] [--features 50] [--classes 5]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def make_rows(n: int, n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # the same classes for every size and the test rows (``seed`` draws the rows only)
    centres = np.random.default_rng(0).normal(0.0, 1.0, (n_classes, n_features))
    centres[:, 5:] = 0.0  # the classes differ in five dimensions
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = (rng.normal(0.0, 1.0, (n, n_features)) + centres[y]).astype(np.float32)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,200000,1000000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--classes", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # lightgbm.dask says it sets the threads itself; Dask, that the rows went in the graph
    # (their transfer is outside the timings)
    warnings.filterwarnings("ignore", category=UserWarning)

    import dask.array as da
    import distributed
    import pandas as pd
    from lightgbm.dask import DaskLGBMClassifier

    from tasks.model import fit_booster
    from tasks.params import TrainParams

    params = TrainParams()
    test_x, test_y = make_rows(20_000, args.features, args.classes, seed=99)
    started = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    print(
        f"LocalCluster of {args.workers} workers started in {time.perf_counter() - started:.1f} s"
    )
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            x, y = make_rows(n, args.features, args.classes, seed=n)
            t0 = time.perf_counter()
            booster = fit_booster(
                pd.DataFrame(x), y, params=params, n_classes=args.classes, random_state=0
            )
            local_s = time.perf_counter() - t0
            local_acc = float((booster.predict(test_x).argmax(axis=1) == test_y).mean())
            t0 = time.perf_counter()
            fit_booster(
                pd.DataFrame(x),
                y,
                params=params.model_copy(update={"num_threads": args.workers}),
                n_classes=args.classes,
                random_state=0,
            )
            threads_s = time.perf_counter() - t0
            chunk = -(-n // args.workers)
            dx = da.from_array(x, chunks=(chunk, args.features)).persist()
            dy = da.from_array(y, chunks=chunk).persist()
            distributed.wait([dx, dy])
            model = DaskLGBMClassifier(
                client=client,
                n_estimators=params.num_boost_round,
                learning_rate=params.learning_rate,
                num_leaves=params.num_leaves,
                min_child_samples=params.min_child_samples_max,
                colsample_bytree=params.feature_fraction,
                reg_lambda=params.lambda_l2,
                num_threads=1,
                verbose=-1,
            )
            t0 = time.perf_counter()
            model.fit(dx, dy)
            dask_s = time.perf_counter() - t0
            dask_acc = float((model.to_local().predict(test_x) == test_y).mean())
            rows.append((n, local_s, threads_s, dask_s, local_acc, dask_acc))
            print(
                f"{n:,} rows: one process {local_s:.2f} s ({threads_s:.2f} s with "
                f"{args.workers} threads), Dask {dask_s:.2f} s",
                flush=True,
            )
            del dx, dy
    finally:
        client.close()
        cluster.close()
    print()
    print(
        f"| labels | alloop fit, 1 thread (s) | alloop fit, {args.workers} threads (s) | "
        f"lightgbm.dask, {args.workers} workers (s) | Dask / one process, 1 thread | "
        "test accuracy (one process, Dask) |"
    )
    print("|---:|---:|---:|---:|---:|---|")
    for n, local_s, threads_s, dask_s, local_acc, dask_acc in rows:
        print(
            f"| {n:,} | {local_s:.2f} | {threads_s:.2f} | {dask_s:.2f} | {dask_s / local_s:.2f} | "
            f"{local_acc:.3f}, {dask_acc:.3f} |"
        )


if __name__ == "__main__":
    main()
