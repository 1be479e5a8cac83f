"""Images/s of each expert on this machine, and the cost of the whole set relative to decoding alone.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experts_throughput.py [--images 64] [--models] [--json out.json]

Images: 224 px photos from scikit-image (astronaut, chelsea, coffee, rocket, ...) and rendered text, stored
as JPEG in one data shard, decoded exactly as the runner does. Offline experts run as shipped. With
``--models``, depth (Depth-Anything-Small architecture, 518 px input) and segmentation (SegFormer-B0, 512 px)
run with *randomly initialised* weights of the real architectures: the speed is that of the real models,
the labels are meaningless (no such weights install offline). Normals are derived from depth.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(n: int) -> list[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat", "camera"):
        im = getattr(data, name)()
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        photos.append(np.asarray(Image.fromarray(im).resize((224, 224), Image.BICUBIC)))
    out = []
    for i in range(n):
        if i % 4 == 3:  # every 4th image: text on a photo
            img = Image.fromarray(photos[i % len(photos)])
            ImageDraw.Draw(img).text((10, 90), f"SALE {i} OFF", fill="white", font=ImageFont.load_default(size=28))
            out.append(np.asarray(img))
        else:
            out.append(np.roll(photos[i % len(photos)], i * 7, axis=1))
    return out


def write_shard(images: list[np.ndarray], root: Path) -> None:
    from PIL import Image

    from vlm.data import format as fmt

    def samples():
        for i, img in enumerate(images):
            jpg = io.BytesIO()
            Image.fromarray(img).save(jpg, "JPEG", quality=90)
            yield f"{i:08x}", {"jpg": jpg.getvalue(), "json": b'{"caption": "x"}'}

    shard = fmt.write_shard(str(root / "train-000000.tar"), samples(), "train")
    fmt.write_manifest(str(root), fmt.Manifest.build([shard], name="bench"))


def model_checkpoints(root: Path) -> dict[str, str]:
    """Real-size architectures with random weights (for timing only)."""
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, SegformerConfig,
                              SegformerForSemanticSegmentation)
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
    from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

    torch.manual_seed(0)
    bb = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                      image_size=518, patch_size=14, out_features=["stage3", "stage6", "stage9", "stage12"],
                      reshape_hidden_states=False)
    da = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384],
                             fusion_hidden_size=64, head_hidden_size=32, patch_size=14)
    DepthAnythingForDepthEstimation(da).save_pretrained(root / "depth")
    DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=False, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(root / "depth")
    seg = SegformerConfig(num_labels=150)  # defaults = SegFormer-B0 (ADE20k head)
    SegformerForSemanticSegmentation(seg).save_pretrained(root / "segformer")
    SegformerImageProcessorPil(size={"height": 512, "width": 512}).save_pretrained(root / "segformer")
    return {"depth": str(root / "depth"), "segmentation": str(root / "segformer")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model-images", type=int, default=16, help="images for the (slow) model-backed experts")
    ap.add_argument("--models", action="store_true", help="also time depth/normals/HF segmentation (random weights)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from vlm.experts import Batch, ExpertsConfig, build
    from vlm.experts.runner import run_experts
    from vlm.data import format as fmt
    from vlm.experts.shards import decode_image

    tmp = Path(tempfile.mkdtemp(prefix="experts-bench-"))
    images = make_images(args.images)
    write_shard(images, tmp / "data")
    shard = str(tmp / "data" / "train-000000.tar")

    t0 = time.perf_counter()
    decoded = [decode_image(sample, 224) for sample in fmt.iter_shard(shard)]
    decode_s = time.perf_counter() - t0
    results = {"machine": {"cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
               "images": len(decoded), "decode_img_per_s": len(decoded) / decode_s, "experts": {}}
    print(f"decode + resize (JPEG 224 px): {len(decoded) / decode_s:8.1f} img/s")

    offline = ["edges", "segmentation", "detection", "ocr"]
    cfg = ExpertsConfig(batch_size=args.batch_size)
    plan = [(n, cfg, decoded) for n in offline]
    if args.models:
        sources = model_checkpoints(tmp / "models")
        mcfg = ExpertsConfig(batch_size=args.batch_size, sources=sources)
        few = decoded[: args.model_images]
        plan += [("depth", mcfg, few), ("segmentation", mcfg, few)]
    depth_maps = None
    for name, c, imgs in plan:
        exp = build(name, c)
        t = time.perf_counter()
        exp.setup()
        setup_s = time.perf_counter() - t
        exp.predict(Batch(["w"], imgs[:1], {}))  # warm-up
        t = time.perf_counter()
        outs = []
        for i in range(0, len(imgs), c.batch_size):
            outs += exp.predict(Batch([str(j) for j in range(i, i + len(imgs[i:i + c.batch_size]))],
                                      imgs[i:i + c.batch_size], {}))
        dt = time.perf_counter() - t
        label = f"{name}/{exp.backend}"
        if name == "depth":
            depth_maps = [o.map for o in outs]
        results["experts"][label] = {"img_per_s": len(imgs) / dt, "ms_per_img": 1000 * dt / len(imgs),
                                     "setup_s": setup_s, "images": len(imgs)}
        print(f"{label:24s} {len(imgs) / dt:8.2f} img/s  {1000 * dt / len(imgs):8.1f} ms/img  (setup {setup_s:.1f}s)")
    if depth_maps is not None:
        exp = build("normals", ExpertsConfig(sources={"depth": "x"}))
        imgs = decoded[: len(depth_maps)]
        t = time.perf_counter()
        exp.predict(Batch([str(i) for i in range(len(imgs))], imgs, {"depth": depth_maps}))
        dt = time.perf_counter() - t
        results["experts"]["normals/from-depth"] = {"img_per_s": len(imgs) / dt, "ms_per_img": 1000 * dt / len(imgs)}
        print(f"{'normals/from-depth':24s} {len(imgs) / dt:8.2f} img/s  {1000 * dt / len(imgs):8.1f} ms/img")

    # the whole offline set end to end (decode, all experts, PNG encode, tar write, labels.json)
    t = time.perf_counter()
    summary = run_experts(str(tmp / "data"), str(tmp / "labels"), offline, cfg)
    whole = time.perf_counter() - t
    results["whole_offline_set"] = {"img_per_s": summary.images / whole, "seconds": whole,
                                    "x_decode": whole / decode_s}
    print(f"whole offline set ({', '.join(offline)}) end to end: {summary.images / whole:.2f} img/s = "
          f"{whole / decode_s:.0f}x the time of decoding alone")
    if args.models:
        per_img = sum(v["ms_per_img"] for v in results["experts"].values()) / 1000 + decode_s / len(decoded)
        results["all_experts_estimate"] = {"img_per_s": 1 / per_img, "x_decode": per_img / (decode_s / len(decoded))}
        print(f"all experts incl. depth/normals/SegFormer (sum of per-expert costs): {1 / per_img:.2f} img/s = "
              f"{per_img / (decode_s / len(decoded)):.0f}x decoding alone")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
