"""An object's tensors travel as one buffer and come back equal, as views of it."""

from __future__ import annotations

import pickle

import torch

from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.train.packed_tensors import ALIGN_BYTES, pack, unpack


def test_a_batch_comes_back_equal_with_every_tensor_a_view_of_one_buffer():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (5, 3), generator=g).T  # not contiguous
    batch = ModelBatch(
        input_ids=torch.randint(0, 9, (3, 5), generator=g),
        labels=labels,
        attention=AttentionSpec(
            "permutation",
            query_rank=torch.randint(0, 5, (3, 5), generator=g),
            key_rank=torch.randint(0, 5, (3, 5), generator=g),
        ),
        target_mapping=torch.rand(3, 2, 5, generator=g),
        objective="plm",
    )
    extra = {"mask": torch.tensor([True, False, True]), "half": torch.ones(7, dtype=torch.bfloat16)}
    structure, flat, layout = pack(([batch, batch], extra, 42))
    assert flat.dtype == torch.uint8 and all(start % ALIGN_BYTES == 0 for start, _, _ in layout)
    assert len(layout) == 7  # the batch listed twice is packed once
    assert len(structure) < 2000  # the tensors' bytes are not in the pickled structure
    (batches, got_extra, number) = unpack(structure, flat, layout)
    assert number == 42 and batches[0] is batches[1]
    got = batches[0]
    for name in ("input_ids", "labels", "target_mapping"):
        assert torch.equal(getattr(got, name), getattr(batch, name)), name
        assert getattr(got, name).dtype == getattr(batch, name).dtype
    assert torch.equal(got.attention.query_rank, batch.attention.query_rank)
    assert torch.equal(got_extra["mask"], extra["mask"]) and got_extra["mask"].dtype == torch.bool
    assert torch.equal(got_extra["half"], extra["half"])
    base = flat.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in (got.input_ids, got_extra["mask"]))
    # and the whole thing survives pickling, as a queue sends it, and unpacks the same
    sent = pickle.loads(pickle.dumps((structure, flat, layout)))
    (again, _, _) = unpack(*sent)
    assert torch.equal(again[0].target_mapping, batch.target_mapping)
    assert torch.equal(again[1].labels, batch.labels)
