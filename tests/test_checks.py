"""``zfraw check`` (zfraw.checks): every check passes on the CPU backends, and a
deliberately broken kernel or op makes the table say FAIL and ``main`` return 1."""
import re

import numpy as np
import pytest

from conftest import backend_params
from zfraw import backend, checks
from zfraw import functional as F


@pytest.mark.parametrize("name", backend_params(include_numpy=True))
def test_every_check_passes(name):
    results = checks.run_checks(name)
    kinds = {r.kind for r in results}
    assert kinds == {"reference", "gradient", "adjoint"}
    assert {r.dtype for r in results if r.kind == "reference"} == {"float32", "float64"}
    failed = [(r.op, r.kind, r.dtype, r.error) for r in results if not r.passed]
    assert not failed
    ops = {r.op for r in results}
    for op in ("conv2d", "conv_transpose2d", "max_pool2d switches", "max_unpool2d", "relu_backward guided",
               "conv2d dw", "max_pool2d dx", "net conv2.w", "net fc4.w", "net dx",
               "conv2d / conv_transpose2d", "conv_matrix C^T y", "pool selection / max_unpool2d"):
        assert op in ops, f"no check for {op}"
    # the errors are real measurements, not placeholders
    assert any(0 < r.error for r in results if r.kind == "gradient")


def test_check_passed_and_table():
    good = checks.Check("op a", "reference", "float64", 1e-14, 1e-12)
    bad = checks.Check("op b", "gradient", "float64", 2e-3, 1e-6)
    nan = checks.Check("op c", "adjoint", "float64", float("nan"), 1e-12)
    assert good.passed and not bad.passed and not nan.passed
    table = checks.format_table([good, bad, nan])
    lines = table.splitlines()
    assert lines[0].split() == ["op", "case", "check", "dtype", "error", "tolerance", "result"]
    row_b = next(line for line in lines if line.startswith("op b"))
    assert row_b.split()[-1] == "FAIL" and "2.00e-03" in row_b
    assert next(line for line in lines if line.startswith("op a")).split()[-1] == "pass"
    assert next(line for line in lines if line.startswith("op c")).split()[-1] == "FAIL"
    assert "1 of 3 checks passed, 2 FAILED" in table


def table_rows(out):
    """The cells of each row of a printed table (columns are separated by two spaces or more)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    return [r for r in rows if len(r) == 7 and r[-1] in ("pass", "FAIL")]


def every_row_says_which_case_it_is(out):
    rows = table_rows(out)
    assert len(rows) > 50
    keys = [tuple(r[:4]) for r in rows]  # op, case, check, dtype
    assert len(set(keys)) == len(keys), [k for k in keys if keys.count(k) > 1]
    conv = [r for r in rows if r[0] == "conv2d" and r[2] == "reference" and r[3] == "float64"]
    assert len(conv) == 2 and {r[1] for r in conv} == {checks.conv_case(*c[:2], *c[2:]) for c in checks.CONV_CASES}
    assert all("stride" in r[1] and "pad" in r[1] for r in conv)


def overwriting_unpool(y, switches, h, w, window):
    """A plausible bug: unpooling that overwrites where switches collide (PyTorch's
    max_unpool2d) instead of summing, which is wrong for overlapping pools."""
    n, c = y.shape[:2]
    x = np.zeros((n, c, h * w), dtype=y.dtype)
    np.put_along_axis(x, switches.reshape(n, c, -1), y.reshape(n, c, -1), axis=2)
    return x.reshape(n, c, h, w)


def test_a_broken_kernel_fails_the_table(monkeypatch, capsys):
    monkeypatch.setitem(backend._get("numpy").kernels, "max_unpool2d", overwriting_unpool)
    assert checks.main("numpy") == 1
    out = capsys.readouterr().out
    rows = {}
    for cells in table_rows(out):
        rows.setdefault(cells[0], []).append(cells[-1])
    assert "FAIL" in rows["max_unpool2d"]
    assert rows["max_pool2d dx"] == ["FAIL"]
    assert all(v == "pass" for v in rows["conv2d"] + rows["linear"] + rows["conv2d dw"])
    assert "FAILED" in out


def test_a_broken_op_fails_the_table(monkeypatch, capsys):
    real = F.local_response_norm_backward

    def off_by_a_little(dy, x, size=5, alpha=1e-4, beta=0.75, k=2.0):
        return real(dy, x, size, alpha, beta, k) * (1 + 1e-4)

    monkeypatch.setattr(F, "local_response_norm_backward", off_by_a_little)
    assert checks.main("numpy") == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.rstrip().endswith("FAIL")]
    assert failed and all("local_response_norm_backward" in line or "local_response_norm dx" in line
                          or line.startswith("net ") for line in failed)
    assert any(line.startswith("local_response_norm dx") for line in failed)
    assert sum(line.startswith("local_response_norm_backward") for line in failed) == 4  # 2 sizes x 2 dtypes
    monkeypatch.undo()
    assert checks.main("numpy") == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    every_row_says_which_case_it_is(out)


def test_small_net_has_every_layer_type():
    from zfraw import nn

    net = checks.small_net(3)
    types = {type(layer) for _, layer in net}
    assert types == set(nn.LAYER_TYPES.values())
    assert any(getattr(layer, "groups", 1) > 1 for _, layer in net)
    assert all(p.dtype == np.float64 for p in net.parameters().values())
