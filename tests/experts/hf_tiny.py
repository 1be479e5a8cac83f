"""Tiny randomly initialised Hugging Face checkpoints for the model-backed experts (built in ~1 s, no download)."""

from __future__ import annotations

from pathlib import Path


def tiny_depth_anything(path: Path) -> Path:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 16, 16],
                              fusion_hidden_size=16, head_hidden_size=16, patch_size=14)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=False, ensure_multiple_of=14).save_pretrained(path)
    return path


def tiny_dpt(path: Path) -> Path:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 16, 16],
                    fusion_hidden_size=16, head_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)
    return path


def tiny_segformer(path: Path, num_labels: int = 5) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

    torch.manual_seed(0)
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          num_attention_heads=[1, 1], decoder_hidden_size=16, num_labels=num_labels,
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
                          id2label={i: f"class{i}" for i in range(num_labels)},
                          label2id={f"class{i}": i for i in range(num_labels)})
    SegformerForSemanticSegmentation(cfg).save_pretrained(path)
    SegformerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path
