"""`lumiere estimate` (issue 29, part 4): a STUNet's cost measured on the meta device agrees with
the real model: its parameter counts, the tensors a real forward keeps for the backward, FLOPs
that grow with the frames, and less activation memory with gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lumiere.cli import main
from lumiere.models.estimate import (
    Workload,
    _LiveBytes,
    _measure,
    estimate,
    example_inputs,
    models_to_estimate,
    paper_models,
)
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet

SMALL = Workload(batch=2, num_frames=4, height=16, width=16)


@pytest.fixture(scope="module")
def tiny_stunet() -> STUNet:
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    stunet.freeze_spatial()
    return stunet


@pytest.fixture(scope="module")
def tiny_dir(tiny_stunet, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_stunet")
    tiny_stunet.save_pretrained(path)
    return path


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def test_parameter_counts_equal_the_real_model(tiny_stunet, tiny_dir):
    (measured,) = models_to_estimate(tiny_dir, num_frames=4, height=16, width=16)
    assert measured.model.device.type == "meta"
    result = estimate(measured, dtypes=())
    assert result.spatial_parameters == count(tiny_stunet.spatial_parameters())
    assert result.temporal_parameters == count(tiny_stunet.temporal_parameters())
    assert result.trained_parameters == result.temporal_parameters  # spatial layers frozen


def test_training_config_builds_its_stage_network(tiny_stunet, tmp_path):
    config = tmp_path / "stunet.yaml"
    config.write_text(
        "stage: stunet\nmodel:\n  preset: tiny\n  init_from: missing/model\n  freeze_spatial: false\n"
        "data:\n  num_frames: 8\n  resolution: 16\noptim:\n  batch_size: 3\n"
    )
    (measured,) = models_to_estimate(config)
    assert measured.workload == Workload(batch=3, num_frames=8, height=16, width=16)
    assert count(measured.model.parameters()) == count(tiny_stunet.parameters())
    assert count(p for p in measured.model.parameters() if p.requires_grad) == count(tiny_stunet.parameters())


def test_flops_grow_linearly_with_frames(tiny_dir):
    flops = {
        frames: estimate(models_to_estimate(tiny_dir, num_frames=frames, height=8, width=8)[0], dtypes=())
        for frames in (4, 8, 12)
    }
    # Affine in frames: the temporal cross-attention projects the text once per pixel, whatever
    # the frame count (and the temporal self-attention's quadratic term is small).
    for kind in ("forward_flops", "training_flops"):
        low, mid, high = (getattr(flops[f], kind) for f in (4, 8, 12))
        assert low < mid < high
        assert high - mid == pytest.approx(mid - low, rel=0.05)
    # A training step: forward + backward, more than the forward, less than 3x with frozen layers.
    assert flops[8].forward_flops < flops[8].training_flops <= 3 * flops[8].forward_flops


def test_checkpointing_lowers_activation_memory(tiny_dir):
    (measured,) = models_to_estimate(tiny_dir, batch=2, num_frames=8, height=16, width=16)
    result = estimate(measured)
    for memory in result.memory.values():
        assert memory.activations_checkpointed < memory.activations / 2
        assert memory.training_peak_checkpointed < memory.training_peak
        assert memory.inference_peak < memory.training_peak
    fp32, bf16 = result.memory["fp32"], result.memory["bf16"]
    assert bf16.activations == pytest.approx(fp32.activations / 2, rel=0.05)


def test_kept_activations_equal_a_real_forwards_saved_tensors(tiny_stunet):
    """What the meta pass says the backward keeps = the distinct tensors autograd saves in a real
    CPU forward (parameters and inputs excluded), plus the output."""
    model = tiny_stunet.train()
    inputs = example_inputs(model, SMALL, torch.float32)
    inputs = {key: value.to("cpu") for key, value in inputs.items()}
    given = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *inputs.values()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in given:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    # CPU flash attention keeps, as CUDA's kernels do, the output and a log-sum-exp per query.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(**inputs).sample
    real = sum(saved.values()) + output.untyped_storage().nbytes()

    with torch.device("meta"):
        meta_model = STUNet.from_config(model.config)
    meta_model.freeze_spatial()
    kept = _measure(meta_model, SMALL, torch.float32, train=True, checkpointing=False).kept
    assert kept == pytest.approx(real, rel=0.05)


def test_views_of_weights_and_inputs_are_not_activations():
    """``F.linear`` runs on ``weight.t()`` and the model reshapes its inputs: views of storage made
    before the pass, which a real forward's saved tensors do not add to. Only the output counts."""
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 32, bias=False)
        clip = torch.empty(8, 64)
    tracker = _LiveBytes()
    with tracker:
        output = layer(clip.unsqueeze(0))
    assert tracker.current == output.untyped_storage().nbytes() == 8 * 32 * 4


def test_paper_setting_has_the_published_image_model_sizes():
    base, ssr = paper_models()
    # DeepFloyd publishes IF-I-XL as 4.3B and IF-II-L as 1.2B parameters.
    assert count(base.model.spatial_parameters()) == pytest.approx(4.3e9, rel=0.02)
    assert count(ssr.model.spatial_parameters()) == pytest.approx(1.2e9, rel=0.02)
    assert (base.workload.num_frames, base.workload.height) == (80, 128)
    assert ssr.model.temporal_factor == 1 and ssr.workload.height == 1024


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_cli_prints_a_table(tiny_dir, capsys):
    assert (
        main(
            ["estimate", str(tiny_dir), "--frames", "4", "--height", "16", "--width", "16", "--dtype", "fp32"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "per denoising step" in out and "| activations, checkpointed |" in out


def test_cli_refuses_a_missing_path_and_bad_frames(tiny_dir, tmp_path, capsys):
    assert exit_code(["estimate", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert exit_code(["estimate", str(tiny_dir), "--frames", "3", "--height", "16", "--width", "16"]) == 2
    assert "argument --frames: must be a positive multiple of 2" in capsys.readouterr().err
    assert exit_code(["estimate", str(tiny_dir), "--frames", "0"]) == 2
