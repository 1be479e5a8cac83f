"""Throughput of the sharding stage vs a naive single-process baseline, on the same data in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shard_throughput.py --images 240 --size 1280x960

Builds a JSONL dataset of unique JPEG photos (random crops of the photos bundled with scikit-image /
scikit-learn / matplotlib, resized to --size), then measures images/s for:
  baseline   one process: Pillow full decode -> RGB -> resize (long side = --max-side) -> JPEG -> one shard
             (vlm.data.format.write_shard); no validation, hashing or de-duplication
  shard x1   vlm.data.shard.shard_dataset with workers=1 (plan, partition, merge, manifest included)
  shard x2   the same with workers=2 (one partition, two worker processes)
  2 parts    partitions=2, workers=1: two partition processes at once, then the merge (the pipeline's fan-out)
and prints the ratios, the per-worker rate (images per CPU-second: what one worker does, whatever else
runs on the machine), the merge step's rate on --merge-records records, and from those, on paper, the wall time of
--estimate-pairs pairs at --estimate-partitions partitions (one worker each) plus the merge.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_dataset(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    from vlm.data.sources.photos import CATALOG, photo_path

    photos = [Image.open(photo_path(p["package"], p["file"])).convert("RGB")
              for p in json.loads(CATALOG.read_text())["photos"]]
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
        im.save(root / "img" / f"{i:05d}.jpg", quality=90)
        rows.append({"image": f"img/{i:05d}.jpg", "caption": f"photo number {i}"})
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "data.jsonl"


def baseline(table: Path, out: Path, max_side: int, quality: int) -> float:
    """Naive: full decode, resize, encode, one shard through the format's writer; one process."""
    from vlm.data import format as fmt

    rows = [json.loads(line) for line in table.read_text().splitlines()]
    t0 = time.perf_counter()

    def samples():
        for i, row in enumerate(rows):
            im = Image.open(table.parent / row["image"]).convert("RGB")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            yield f"{i:06d}", {"jpg": buf.getvalue(), "txt": row["caption"].encode()}

    fmt.write_shard(str(out / "train-000000.tar"), samples())
    return len(rows) / (time.perf_counter() - t0)


def merge_rate(out: Path, records: int) -> float:
    """Images/s of the merge step alone (index, de-duplication, copying out of the part shards) on a set big
    enough that its fixed costs do not dominate: ``records`` builtin:shapes scenes of 224 px."""
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset

    m = shard_dataset("builtin:shapes", str(out), ShardConfig(builtin_size=records, builtin_image_size=224,
                                                              samples_per_shard=1000))
    return m.num_samples / m.merge_s


def sharded(table: Path, out: Path, workers: int, max_side: int, quality: int, per_shard: int,
            partitions: int = 1) -> float:
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset

    cfg = ShardConfig(workers=workers, max_side=max_side, jpeg_quality=quality, samples_per_shard=per_shard,
                      partitions=partitions, min_partition_records=1)
    t0 = time.perf_counter()
    m = shard_dataset(str(table), str(out), cfg)
    elapsed = time.perf_counter() - t0
    assert m.num_samples == m.num_input_records, m.rejected
    assert m.partitions == partitions, m.partitions
    return m.num_input_records / elapsed


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--size", default="1280x960", help="WxH of the generated input photos")
    ap.add_argument("--max-side", type=int, default=224)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--per-shard", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per variant")
    ap.add_argument("--estimate-pairs", type=int, default=5_000_000)
    ap.add_argument("--estimate-partitions", type=int, default=32)
    ap.add_argument("--merge-records", type=int, default=5000, help="records of the merge-only measurement")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="vlm-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        table = make_dataset(root / "raw", args.images, size)
        print(f"dataset: {args.images} JPEGs of {size[0]}x{size[1]} ({time.perf_counter() - t0:.1f}s to build); "
              f"output long side {args.max_side}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
        results: dict[str, float] = {}
        per_cpu: dict[str, float] = {}
        variants = (
            ("baseline", lambda o: baseline(table, o, args.max_side, args.quality)),
            ("shard x1", lambda o: sharded(table, o, 1, args.max_side, args.quality, args.per_shard)),
            ("shard x2", lambda o: sharded(table, o, 2, args.max_side, args.quality, args.per_shard)),
            ("2 parts", lambda o: sharded(table, o, 1, args.max_side, args.quality, args.per_shard, partitions=2)),
        )
        for rep in range(args.repeats):
            for name, fn in variants:
                out = root / f"{name.replace(' ', '')}-{rep}"
                out.mkdir()
                c0 = _cpu()
                ips = fn(out)
                results[name] = max(results.get(name, 0.0), ips)
                per_cpu[name] = max(per_cpu.get(name, 0.0), args.images / (_cpu() - c0))
        load = os.getloadavg()[0]
        for name, ips in results.items():
            print(f"{name:10s} {ips:8.1f} images/s wall   {per_cpu[name]:8.1f} images per CPU-second")
        if load > 1.5:
            print(f"note: load average {load:.1f} - other processes share the CPUs; wall-clock scaling is "
                  "understated, images per CPU-second is the per-worker figure")
        b, s1, s2, p2 = results["baseline"], results["shard x1"], results["shard x2"], results["2 parts"]
        print(f"shard x1 / baseline              = {s1 / b:.2f}")
        print(f"shard x2 / baseline (per worker) = {s2 / 2 / b:.2f}")
        print(f"shard x2 / shard x1 (scaling)    = {s2 / s1:.2f}")
        print(f"2 parts  / shard x1 (scaling)    = {p2 / s1:.2f}")
        worker, merge = per_cpu["shard x1"], merge_rate(root / "merge", args.merge_records)
        n, parts = args.estimate_pairs, args.estimate_partitions
        t_part, t_merge = n / parts / worker, n / merge
        print(f"merge alone ({args.merge_records} records, 1 process): {merge:.0f} images/s")
        print(f"on paper: {n:,} pairs at {parts} partitions x 1 worker = {n / parts:,.0f} pairs per partition / "
              f"{worker:.1f} img/s = {t_part / 60:.0f} min, + merge {n:,} / {merge:.0f} img/s = {t_merge / 60:.0f} min "
              f"-> {(t_part + t_merge) / 60:.0f} min wall (local disk; inputs already local, no downloads)")


if __name__ == "__main__":
    main()
