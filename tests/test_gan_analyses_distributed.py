"""The GAN analyses under torch.distributed (two gloo processes on CPU): insertion_context and
generated_vs_real sum integer counts (bit-identical to one process), artifact_units sums float64
(equal up to rounding, same ranking)."""
import torch
from gloo import run_gloo

from dissect_kernels import distributed as ddp
from dissect_kernels.artifacts import artifact_units
from dissect_kernels.context import insertion_context
from dissect_kernels.gan_real import generated_vs_real
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator
from dissect_kernels.models.tiny_gan_data import REAL_IMAGES, haze_score

N = 7                # odd: the shards differ in size


def _job(out: str) -> None:
    g, s = load_default_generator(), default_segmenter()
    ctx = insertion_context(g, "layer3", [4, 15, 21], s, "door", num_samples=N, grid=4, value=1.0, batch_size=2)
    art = artifact_units(g, "layer3", haze_score, num_samples=N, batch_size=2)
    real = generated_vs_real(g, s, REAL_IMAGES, num_samples=N, max_real=9, batch_size=4)
    torch.save({"ctx": ctx.counts, "art": {"order": art.order, "effect": art.effect, "scores": art.scores,
                                           "after": torch.tensor(art.score_after)},
                "real": {**{f"g_{k}": v for k, v in real.generated.items()},
                         **{f"r_{k}": v for k, v in real.real.items()}}},
               f"{out}/rank{ddp.rank()}.pt")


def test_two_ranks_match_one_process(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp_path / "one").mkdir()
        _job(str(tmp_path / "one"))
    finally:
        torch.set_num_threads(n)
    (tmp_path / "two").mkdir()
    run_gloo(_job, str(tmp_path / "two"))
    one = torch.load(tmp_path / "one/rank0.pt")
    for r in (0, 1):
        two = torch.load(tmp_path / f"two/rank{r}.pt")
        for k, v in one["ctx"].items():
            assert torch.equal(v, two["ctx"][k]), k
        for k, v in one["real"].items():
            assert torch.equal(v, two["real"][k]), k
        assert torch.equal(one["art"]["order"], two["art"]["order"])
        for k in ("effect", "scores", "after"):
            assert torch.allclose(one["art"][k], two["art"][k], rtol=0, atol=1e-12), k
