"""Data stage: sources -> validation -> WebDataset shards + manifest, and the one dataset format.

- ``vlm.data.format``: owns the on-disk format (manifest, samples, QA, shard writer and reader); every
  stage reads and writes datasets through it (``docs/formats.md``).
- ``vlm.data.shard``: ``shard_dataset(input, output, cfg) -> Manifest`` (``vlm shard`` CLI), and its fan-out
  steps ``plan_partitions`` -> ``shard_partition`` x N -> ``merge_partitions``.
- ``vlm.data.sources``: one module per input kind (tables with paths, URLs or embedded bytes; image
  folders; WebDataset tars; builtin sets). ``vlm.data.fetch`` downloads image URLs.

Heavy modules are imported lazily by their users; importing ``vlm.data`` is cheap.
"""
