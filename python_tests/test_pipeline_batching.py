"""Dict samples, batch_fn, collate_fn, forward keywords and Hugging Face style outputs in find_tickets / joint_retrain."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

import rtl_kernels as rtl
from rtl_kernels.pipeline import Batching, find_tickets, joint_retrain, logits_of
from rtl_kernels.pipeline.training import predict

pytestmark = pytest.mark.usefixtures("one_thread")


class DictData(Dataset):
    def __init__(self, tensors):
        self.x, self.y = tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones(self.x.shape[1]), "labels": self.y[i]}


class Output:
    def __init__(self, logits):
        self.logits = logits


class HFStyle(torch.nn.Module):
    """forward(input_ids, attention_mask=...) -> object with .logits, like a Hugging Face classifier."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(8, 12)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, input_ids, attention_mask=None):
        assert attention_mask is not None and attention_mask.shape == input_ids.shape
        return Output(self.head(torch.relu(self.body(input_ids * attention_mask))))


def data(num_tickets=2):
    g = torch.Generator().manual_seed(0)
    return [TensorDataset(torch.randn(20, 8, generator=g) + k, torch.randint(0, 3, (20,), generator=g)) for k in range(num_tickets)]


def model():
    torch.manual_seed(0)
    return rtl.convert(HFStyle(), 2)


ARGS = dict(loss_fn=F.cross_entropy, lr=1e-2, batch_size=8, progress=False)
DICT = Batching(input_key="input_ids", target_key="labels", forward_keys=("attention_mask",))


@pytest.mark.parametrize("mode", ["sequential", "fused"])
def test_dict_samples_match_tensor_samples(mode):
    tensors = data()
    dicts = [DictData(t.tensors) for t in tensors]
    as_tuple = Batching(batch_fn=lambda b: (b[0], b[1], {"attention_mask": torch.ones_like(b[0])}))
    a, b = model(), model()
    masks_a = find_tickets(a, tensors, sparsity=0.5, rounds=2, epochs_per_round=1, batching=as_tuple, **ARGS)
    masks_b = find_tickets(b, dicts, sparsity=0.5, rounds=2, epochs_per_round=1, batching=DICT, **ARGS)
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    joint_retrain(a, tensors, epochs=1, mode=mode, batching=as_tuple, **ARGS)
    joint_retrain(b, dicts, epochs=1, mode=mode, batching=DICT, **ARGS)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    out = predict(b, dicts[0], 0, batching=DICT)
    assert out.shape == (20, 3)


def test_collate_fn_is_used():
    calls = []

    def collate(samples):
        calls.append(len(samples))
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    dicts = [DictData(t.tensors) for t in data()]
    batching = Batching(input_key="input_ids", target_key="labels", forward_keys=("attention_mask",), collate_fn=collate)
    joint_retrain(model(), dicts, epochs=1, batching=batching, **ARGS)
    assert calls and max(calls) == 8


def test_bad_batching_is_a_clear_error():
    dicts = [DictData(t.tensors) for t in data()]
    with pytest.raises(TypeError, match=r"samples are dicts .*input_key"):
        joint_retrain(model(), dicts, epochs=1, **ARGS)
    with pytest.raises(ValueError, match="either batch_fn or input_key"):
        Batching(input_key="x", batch_fn=lambda b: b)
    with pytest.raises(TypeError, match="collate_fn"):
        Batching(collate_fn=3)
    with pytest.raises(TypeError, match="forward_keys"):
        Batching(forward_keys="attention_mask")
    with pytest.raises(TypeError, match="batching"):
        joint_retrain(model(), dicts, epochs=1, batching={"input_key": "x"}, **ARGS)
    with pytest.raises(TypeError, match="batch_fn: expected it to return"):
        joint_retrain(model(), data(), epochs=1, batching=Batching(batch_fn=lambda b: b[0]), **ARGS)
    assert torch.equal(logits_of({"logits": torch.ones(2)}), torch.ones(2))
    with pytest.raises(TypeError, match="model output"):
        logits_of("text")
