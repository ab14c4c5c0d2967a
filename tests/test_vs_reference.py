"""benchmarks/vs_reference.py against the references' own code, when the user points to their
checkouts ($DK_NETDISSECT_DIR: davidbau/dissect, $DK_NDL_DIR: NetDissect-Lite); skipped otherwise
(nothing is vendored or downloaded). With the reference's thresholds fed in, every IoU agrees to
1e-6 and every best label is the same."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_reference.py"


def _bench():
    spec = importlib.util.spec_from_file_location("vs_reference", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vs_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("flag,env,ref,tag", [("--netdissect", "DK_NETDISSECT_DIR", "netdissect", "given"),
                                              ("--ndl", "DK_NDL_DIR", "netdissect-lite", "given_stale_flag")])
def test_agrees_with_the_reference(tmp_path, monkeypatch, flag, env, ref, tag):
    path = os.environ.get(env)
    if not path:
        pytest.skip(f"set {env} to a checkout of the reference to compare against it")
    import json
    for other in ("DK_NETDISSECT_DIR", "DK_NDL_DIR"):
        monkeypatch.delenv(other, raising=False)
    out = tmp_path / "vs.json"
    assert _bench().main([flag, path, "--seeds", "2", "--images", "16", "--json", str(out)]) == 0
    cases = json.loads(out.read_text())[ref]
    assert len(cases) == 6                     # 2 datasets x (2 SmallCNN layers + 1 ResNet-18 layer)
    for name, r in cases.items():
        assert r[f"iou_max_abs_diff_{tag}"] <= 1e-6, name
        assert r[f"same_label_{tag}_share"] == 1.0, (name, r[f"label_diffs_{tag}"])


def test_refuses_without_a_checkout(capsys, monkeypatch):
    monkeypatch.delenv("DK_NETDISSECT_DIR", raising=False)
    monkeypatch.delenv("DK_NDL_DIR", raising=False)
    with pytest.raises(SystemExit):
        _bench().main([])
    assert "give --netdissect PATH" in capsys.readouterr().err
