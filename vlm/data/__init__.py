"""Data stage: sources -> validation -> WebDataset shards + manifest, and the streaming reader.

- ``vlm.data.shard.shard_dataset(input, output, cfg) -> manifest`` writes shards (``vlm shard`` CLI).
- ``vlm.data.reader``: ``read_manifest``, ``iter_samples``, ``ShardDataset`` (torch IterableDataset).
- ``vlm.data.sources``: one module per input kind (tables, image folders, tars, builtin sets).

Heavy modules are imported lazily by their users; importing ``vlm.data`` is cheap.
"""
