"""Artifact units (dissect_kernels.artifacts) on the shipped tiny generator. The planted
artifact: grey haze (models.tiny_gan_data.haze_score); its planted causes are layer3's eight
noise units, the only units that feed the grey background logit. The ranking must find them and
ablating the top ones must lower the score; annotations (a CSV) rank by correlation."""
import pytest
import torch

from dissect_kernels.artifacts import artifact_units, read_annotations
from dissect_kernels.models.tiny_gan import load_default_generator, tiny_gan_info
from dissect_kernels.models.tiny_gan_data import haze_score

NOISE = set(tiny_gan_info()["noise"])


@pytest.fixture(scope="module")
def gen():
    return load_default_generator()


@pytest.fixture(scope="module")
def ranked(gen):
    return artifact_units(gen, "layer3", haze_score, num_samples=24, ablate=3, batch_size=8)


def test_ranking_finds_the_planted_artifact_units_and_ablation_lowers_the_score(ranked):
    order = ranked.order.tolist()
    assert set(order[:len(NOISE)]) == NOISE                    # exactly the noise units first
    assert (ranked.effect[order[:len(NOISE)]] > 0).all() and (ranked.effect[order[len(NOISE):]] < 0).all()
    assert ranked.ablated == order[:3]
    assert ranked.score_after < ranked.score_before - 0.01     # removing them removes haze
    js = ranked.to_json()
    assert js["ranking"] == "ablation" and js["units"][0]["unit"] == order[0] and len(js["units"]) == 24
    assert js["score"] == "haze_score"
    assert js["score_after"] < js["score_before"]


def test_score_before_is_the_mean_of_the_callable(gen, ranked):
    from dissect_kernels.generated import sample_z
    with torch.no_grad():
        s = haze_score(gen(sample_z(torch.arange(24), 48)))
    assert torch.allclose(ranked.scores, s)
    assert ranked.score_before == pytest.approx(float(s.mean()))


def test_annotations_rank_by_correlation(gen, ranked, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("sample,score\n" + "".join(f"{i},{float(s)!r}\n" for i, s in enumerate(ranked.scores)))
    r = artifact_units(gen, "layer3", path, num_samples=24, ablate=3)
    assert r.ranking == "correlation" and r.effect is None and r.score_after is None
    assert torch.allclose(r.correlation, ranked.correlation)
    assert set(r.order[:5].tolist()) <= NOISE                  # the noise units correlate with haze
    with pytest.raises(ValueError, match="no score for samples"):
        artifact_units(gen, "layer3", path, num_samples=30)


@pytest.mark.parametrize("text, match", [("a,b\n1,2\n", "header"), ("sample,score\nx,1\n", "must be an int"),
                                         ("sample,score\n1,1\n1,2\n", "repeated"), ("sample,score\n", "no annotated")])
def test_bad_annotation_files(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_annotations(path)


def test_bad_score(gen):
    with pytest.raises(ValueError, match="one number per image"):
        artifact_units(gen, "layer3", lambda im: im.mean((1, 2)), num_samples=2)
    with pytest.raises(ValueError, match="ablate"):
        artifact_units(gen, "layer3", haze_score, num_samples=2, ablate=30)
