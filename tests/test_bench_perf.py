"""bench/profile_step.py and bench/same_process.py still run (tiny sizes, one
repeat, no timing checked)."""
import json

import pytest

import zfraw

from test_bench import _load, _quiet


@pytest.mark.skipif("numba" not in zfraw.backends(), reason="needs Numba")
def test_profile_step_covers_every_layer_and_part(tmp_path):
    profile = _load("profile_step")
    result = profile.main(["--model", "zfnet_mini", "--image-size", "32", "--num-classes", "5", "--batch", "2",
                           "--repeat", "1", "--no-torch", "--out", str(tmp_path)], log=_quiet)
    parts = {(r["layer"], r["part"]) for r in result["rows"]}
    assert {("conv1", "forward"), ("conv1", "backward"), ("fc8", "backward"), ("loss", "forward"),
            ("SGD.step", "update")} <= parts
    assert sum(r["median_ms"] for r in result["rows"]) <= result["step_ms"] * 1.001  # parts within the step
    (md,) = tmp_path.glob("profile-step-*.md")
    assert "| conv1 |" in md.read_text() and "**sum**" in md.read_text()


@pytest.mark.slow
@pytest.mark.skipif("numba" not in zfraw.backends(), reason="needs Numba")
def test_same_process_runs_every_order(tmp_path):
    common = _load("common")
    if not common.torch_installed():
        pytest.skip("needs PyTorch")
    same = _load("same_process")
    result = same.main(["--quick", "--model", "zfnet_mini", "--image-size", "24", "--batch", "1",
                        "--cases", "conv2 forward", "--out", str(tmp_path)], log=_quiet)
    assert set(result["threading_layers"]) == set(same.ORDERS)
    assert result["threading_layers"]["torch first"] != "omp"
    (js,) = tmp_path.glob("same-process-*.json")
    orders = {r["order"] for r in json.loads(js.read_text())["rows"]}
    assert orders == set(same.ORDERS)
