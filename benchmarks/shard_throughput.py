"""Throughput of the sharding stage vs a naive single-process baseline, on the same data in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shard_throughput.py --images 240 --size 1280x960

Builds a JSONL dataset of unique JPEG photos (random crops of the photos bundled with scikit-image /
scikit-learn / matplotlib, resized to --size), then measures images/s for:
  baseline   one process: Pillow decode -> RGB -> resize (long side = --max-side) -> JPEG -> tarfile
  shard x1   vlm.data.shard.shard_dataset with workers=1 (validation, hashing, dedup, manifest included)
  shard x2   the same with workers=2
and prints the ratios (per worker vs baseline, and x2 vs x1).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


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
    """Naive: full decode, resize, encode, tarfile write; one process."""
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    t0 = time.perf_counter()
    with tarfile.open(out, "w") as tf:
        for i, row in enumerate(rows):
            im = Image.open(table.parent / row["image"]).convert("RGB")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            for name, data in ((f"{i:06d}.jpg", buf.getvalue()), (f"{i:06d}.txt", row["caption"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return len(rows) / (time.perf_counter() - t0)


def sharded(table: Path, out: Path, workers: int, max_side: int, quality: int, per_shard: int) -> float:
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset

    cfg = ShardConfig(workers=workers, max_side=max_side, jpeg_quality=quality, samples_per_shard=per_shard)
    t0 = time.perf_counter()
    m = shard_dataset(str(table), str(out), cfg)
    elapsed = time.perf_counter() - t0
    assert m["num_samples"] == m["num_input_records"], m["rejected"]
    return m["num_input_records"] / elapsed


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
        for rep in range(args.repeats):
            for name, fn in (("baseline", lambda o: baseline(table, o / "b.tar", args.max_side, args.quality)),
                             ("shard x1", lambda o: sharded(table, o, 1, args.max_side, args.quality, args.per_shard)),
                             ("shard x2", lambda o: sharded(table, o, 2, args.max_side, args.quality, args.per_shard))):
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
        b, s1, s2 = results["baseline"], results["shard x1"], results["shard x2"]
        print(f"shard x1 / baseline          = {s1 / b:.2f}")
        print(f"shard x2 / baseline (per worker) = {s2 / 2 / b:.2f}")
        print(f"shard x2 / shard x1 (scaling)    = {s2 / s1:.2f}")


if __name__ == "__main__":
    main()
