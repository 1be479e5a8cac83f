"""The example stream: deterministic, resumable by position, split across ranks, bad samples counted."""

from __future__ import annotations

import itertools

import pytest

from vlm.train.data import DataError, ExampleBuilder, ExampleStream, SampleStream, eval_examples, list_shards


def _stream(shards, rank=0, world=1, seed=0, buffer=8, tasks=("caption", "vqa"), worker=0, workers=1):
    samples = SampleStream(shards, rank, world, seed, buffer, worker=worker, num_workers=workers)
    return ExampleStream(samples, ExampleBuilder(list(tasks), ["Describe.", "Caption this."], seed))


def _keys(stream, n, skip=0):
    return [(pos, ex["key"], ex["task"], ex["instruction"]) for pos, ex in itertools.islice(stream.examples(skip), n)]


def test_lists_split_shards_in_order(shards):
    train = list_shards(shards, "train")
    assert [s.name for s in train] == [f"train-{i:06d}.tar" for i in range(4)]
    assert len(list_shards(shards, "val")) == 1
    assert list_shards(shards, "nope") == []


def test_stream_is_deterministic_and_skip_resumes_exactly(shards):
    urls = list_shards(shards, "train")
    full = _keys(_stream(urls), 60)  # more than one epoch (47 usable samples)
    assert full == _keys(_stream(urls), 60)
    assert _keys(_stream(urls), 40, skip=full[19][0]) == full[20:60]
    assert full != _keys(_stream(urls, seed=1), 60)  # the seed matters
    first_epoch = [k for _, k, _, _ in full[:47]]
    assert len(set(first_epoch)) == 47  # every usable sample once per epoch


def test_ranks_and_workers_partition_the_data(shards):
    urls = list_shards(shards, "train")
    per_rank = [{k for _, k, _, _ in _keys(_stream(urls, rank=r, world=2), 23)} for r in range(2)]
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == 46  # 47 usable samples, both ranks' first 23
    # fewer shards than ranks: samples are dealt round-robin instead
    one = urls[:1]
    a = {k for _, k, _, _ in _keys(_stream(one, rank=0, world=3, buffer=0), 3)}
    b = {k for _, k, _, _ in _keys(_stream(one, rank=1, world=3, buffer=0), 3)}
    assert a and b and not a & b
    w = [{k for _, k, _, _ in _keys(_stream(urls, worker=i, workers=2), 10)} for i in range(2)]
    assert not w[0] & w[1]


def test_bad_samples_are_rejected_and_counted(shards):
    stream = _stream(list_shards(shards, "train"), buffer=0)
    got = _keys(stream, 47)
    assert "train00000" not in {k for _, k, _, _ in got}  # its image is not an image
    assert stream.rejected["undecodable"] == 1
    vqa_only = _stream(list_shards(shards, "train"), tasks=("vqa",))
    ex = next(vqa_only.examples())[1]
    assert ex["task"] == "vqa" and ex["instruction"] == "What color is the shape?"
    assert ex["answer"] in {"red", "green", "blue", "yellow"}


def test_examples_follow_the_tasks(shards):
    exs = [ex for _, ex in itertools.islice(_stream(list_shards(shards, "train")).examples(), 40)]
    caps = [e for e in exs if e["task"] == "caption"]
    vqas = [e for e in exs if e["task"] == "vqa"]
    assert caps and vqas
    assert {e["instruction"] for e in caps} <= {"Describe.", "Caption this."}
    assert all(e["answer"].startswith("a ") for e in caps)
    assert all(e["answer"] == e["answer"].strip() and " " not in e["answer"] for e in vqas)


def test_task_weights_set_the_mix(shards):
    urls = list_shards(shards, "train")

    def vqa_share(weights):
        samples = SampleStream(urls, 0, 1, 0, 8)
        stream = ExampleStream(samples, ExampleBuilder(["caption", "vqa"], ["Describe."], 0, weights))
        tasks = [ex["task"] for _, ex in itertools.islice(stream.examples(), 300)]
        return tasks.count("vqa") / len(tasks)

    assert vqa_share({"caption": 9, "vqa": 1}) < 0.2 < 0.35 < vqa_share({}) < 0.65 < 0.8 < vqa_share({"caption": 1, "vqa": 9})
    assert vqa_share({"caption": 0}) == 1.0  # a zero weight switches a task off
    from vlm.train.config import TrainConfig

    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(tasks=["caption"], task_weights={"caption": 0})


def test_eval_set_is_fixed(shards):
    a = eval_examples(shards, "val", 6, ["caption", "vqa"], "Describe.")
    b = eval_examples(shards, "val", 6, ["caption", "vqa"], "Describe.")
    assert [(e["key"], e["task"]) for e in a] == [(e["key"], e["task"]) for e in b]
    assert len(a) == 6 and {e["task"] for e in a} == {"caption", "vqa"}
    assert all(e["instruction"] == "Describe." for e in a if e["task"] == "caption")


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no shards"):
        SampleStream([])


def test_balance_answers_evens_out_a_common_answer():
    qa = [{"question": f"is there a {c} shape?", "answers": ["no"]} for c in ("red", "blue", "green")]
    qa.append({"question": "is there a gray shape?", "answers": ["yes"]})
    sample = {"__key__": "k", "image": None, "meta": {"qa": qa}}

    def picks(balance):
        builder = ExampleBuilder(["vqa"], ["Describe."], balance_answers=balance)
        return [builder.build(sample, epoch) for epoch in range(400)]

    uniform, balanced = picks(False), picks(True)
    share = lambda exs: sum(e["answer"] == "yes" for e in exs) / len(exs)  # noqa: E731
    assert 0.15 < share(uniform) < 0.35 and 0.4 < share(balanced) < 0.6
    assert {e["instruction"] for e in balanced if e["answer"] == "no"} == {q["question"] for q in qa[:3]}
    assert all(e["answer"] == "yes" for e in balanced if e["instruction"] == "is there a gray shape?")


def test_training_batches_carry_what_the_models_targets_need(shards):
    """The engine's batches reach ``collate`` with each example's task and caption: a ``describe_first`` model
    is taught "<caption> Question: <answer>" (the question given between them) on VQA examples, the caption alone
    on caption examples."""
    import torch

    from vlm.models import build_model
    from vlm.train.batches import BatchDataset
    from vlm.train.config import TrainConfig
    from vlm.train.dist import DistInfo

    model = build_model({"vision": {"type": "tiny"}, "llm": {"type": "tiny"}, "describe_first": True})
    cfg = TrainConfig(tasks=["caption", "vqa"], batch_size=8, shuffle_buffer=0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    batch = next(iter(BatchDataset(list_shards(shards, "train"), cfg, info, model.collate, [0])))[0]
    taught = [model.tokenizer.decode(row[row != -100].tolist()) for row in batch["labels"]]
    vqa = [t for t in taught if " Question: " in t]
    assert vqa and all(t.startswith("a ") and t.endswith(("red###", "green###", "blue###", "yellow###")) for t in vqa)
    assert all(t.startswith("a ") for t in taught), taught  # caption examples: the caption itself
