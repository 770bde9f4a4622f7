"""rtl.load checks everything before copying anything; corrupt saves and stage files are clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.models.io import saved_masks
from rtl_kernels.pipeline.store import DirStore, StageFileError, read_json, read_tensors


def build(k: int, hidden: int = 8) -> nn.Module:
    torch.manual_seed(k)
    model = nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    return rtl.convert(model, k)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} was changed by a failed load"


def rewrite(path, name: str, edit) -> None:
    tensors = load_file(str(path / name))
    edit(tensors)
    save_file(tensors, str(path / name))


def test_masks_of_another_k_raise_load_error_before_any_weight_is_copied(tmp_path):
    """The reproduced case: a K=3 masks.safetensors copied into a K=4 save."""
    rtl.save(build(3), tmp_path / "k3")
    rtl.save(build(4), tmp_path / "k4")
    (tmp_path / "k4" / "masks.safetensors").write_bytes((tmp_path / "k3" / "masks.safetensors").read_bytes())
    model = build(4)
    with torch.no_grad():
        model[0].weight.fill_(7.0)  # differs from the save: a partial copy would overwrite it
    before = snapshot(model)
    with pytest.raises(rtl.LoadError, match=r"holds 3 tickets for layer '0'.*have 4"):
        rtl.load(tmp_path / "k4", model)
    assert_untouched(model, before)


def _bad_late_weight(t):
    t["2.bias"] = torch.zeros(3)


def _mask_bytes_short(t):
    t["2"] = t["2"][:-1].clone()  # layer 2 holds 3 tickets x 2 x 8 bits: 6 bytes, one is missing


def _extra_mask(t):
    t["9"] = t["0"].clone()


def _drop_mask(t):
    del t["2"]


def _int_weight(t):
    t["2.bias"] = torch.zeros(2, dtype=torch.int64)


CORRUPTIONS = {
    "late weight has the wrong shape": ("weights.safetensors", _bad_late_weight, r"'2\.bias' has shape \[2\], the save has \[3\]"),
    "mask bytes of the wrong size": ("masks.safetensors", _mask_bytes_short, r"masks for layer '2'.*malformed.*expected 6 uint8 bytes"),
    "masks for an unknown layer": ("masks.safetensors", _extra_mask, "not RTL layers"),
    "masks of a layer missing": ("masks.safetensors", _drop_mask, "no masks for layer '2'"),
    "integer tensor for a float weight": ("weights.safetensors", _int_weight, "dtype"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_every_corruption_raises_load_error_and_leaves_the_model_untouched(tmp_path, case):
    name, edit, message = CORRUPTIONS[case]
    rtl.save(build(3), tmp_path)
    rewrite(tmp_path, name, edit)
    model = build(3)
    rtl.set_masks(model, {n: torch.rand(3, *p.weight_shape) < 0.5 for n, p in rtl.masks_of(model).items()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = snapshot(model)
    with pytest.raises(rtl.LoadError, match=message):
        rtl.load(tmp_path, model)
    assert_untouched(model, before)


def test_truncated_files_raise_load_error_naming_the_file(tmp_path):
    rtl.save(build(2), tmp_path)
    data = (tmp_path / "masks.safetensors").read_bytes()
    (tmp_path / "masks.safetensors").write_bytes(data[: len(data) // 2])
    model = build(2)
    before = snapshot(model)
    with pytest.raises(rtl.LoadError, match=r"masks\.safetensors is not a readable safetensors file"):
        rtl.load(tmp_path, model)
    assert_untouched(model, before)


def test_a_valid_load_still_copies_everything_in_place(tmp_path):
    source = build(3)
    rtl.set_masks(source, {n: torch.rand(3, *p.weight_shape) < 0.5 for n, p in rtl.masks_of(source).items()})
    rtl.save(source, tmp_path)
    model = build(3)
    weight = model[0].weight
    rtl.load(tmp_path, model)
    assert model[0].weight is weight  # same Parameter object: an optimizer built before still works
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_corrupt_stage_files_name_the_file_and_say_it_can_be_deleted(tmp_path):
    store = DirStore(tmp_path)
    store.save_mask(0, 1, {"0": torch.ones(2, 2, dtype=torch.bool)})
    path = tmp_path / "round_000" / "ticket_001.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StageFileError, match=r"ticket_001\.safetensors: .*corrupt.*delete it to recompute"):
        store.load_mask(0, 1)
    assert store.load_mask(0, 2) is None  # a missing stage file is simply not done yet
    (tmp_path / "rewind_000.safetensors").write_bytes(b"garbage")
    with pytest.raises(StageFileError, match=r"rewind_000\.safetensors"):
        store.load_rewind(0)
    (tmp_path / "eval.json").write_text('{"truncated": ')
    with pytest.raises(StageFileError, match=r"eval\.json: .*delete it"):
        read_json(tmp_path / "eval.json")
    assert read_tensors(tmp_path / "absent.safetensors") is None
    assert issubclass(StageFileError, ValueError)


def test_a_stored_mask_is_reused_only_on_the_schedule_that_found_it(tmp_path):
    mask = {"0": torch.tensor([[True, False], [False, True]])}
    DirStore(tmp_path, schedule=[0.5, 0.75]).save_mask(1, 0, mask)
    # round 1's mask depends on the sparsities of rounds 0 and 1 only
    for schedule, reused in (([0.5, 0.75], True), ([0.5, 0.75, 0.9], True), ([0.5, 0.8], False), ([0.4, 0.75], False)):
        got = DirStore(tmp_path, schedule=schedule).load_mask(1, 0)
        assert (got is not None) == reused, schedule
        if reused:
            assert got.keys() == mask.keys() and got["0"].dtype == torch.bool and torch.equal(got["0"], mask["0"])
    assert torch.equal(DirStore(tmp_path).load_mask(1, 0)["0"], mask["0"]), "a store without a schedule takes any mask"


def _as_format_1(path, model) -> None:
    """Rewrite a save as format 1 wrote it: int32 mask rows padded to whole words."""
    save_file({name: p.bits for name, p in rtl.masks_of(model).items()}, str(path / "masks.safetensors"))
    meta = json.loads((path / "rtl.json").read_text())
    meta["format_version"] = 1
    (path / "rtl.json").write_text(json.dumps(meta))


def test_format_1_saves_with_padded_mask_rows_still_load_and_check_their_padding(tmp_path):
    source = build(3)
    rtl.set_masks(source, {n: torch.rand(3, *p.weight_shape) < 0.5 for n, p in rtl.masks_of(source).items()})
    rtl.save(source, tmp_path)
    _as_format_1(tmp_path, source)
    model = rtl.load(tmp_path, build(3))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert {n: p.bits.shape for n, p in saved_masks(tmp_path).items()} == {n: p.bits.shape for n, p in rtl.masks_of(source).items()}

    def set_padding_bit(t):
        t["2"] = t["2"].clone()
        t["2"][0, 0, 0] |= 1 << 20  # layer 2's rows have 8 columns: bits 8..31 are padding

    rewrite(tmp_path, "masks.safetensors", set_padding_bit)
    before = snapshot(model)
    with pytest.raises(rtl.LoadError, match="padding bits"):
        rtl.load(tmp_path, model)
    assert_untouched(model, before)
