"""Generic (image, label map) datasets: same item dict as BrodenDataset, from tensors or folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from dissect_kernels.data import FolderSegmentationDataset, TensorSegmentationDataset


def test_tensor_dataset():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8, generator=g)
    labs = torch.randint(0, 700, (5, 8, 8), generator=g)
    ds = TensorSegmentationDataset(imgs, labs, image_labels=torch.full((5, 1), 3))
    assert ds.num_concepts == int(labs.max()) + 1 and len(ds.concept_names) == ds.num_concepts
    assert ds.resolution == 16 and ds.label_size == 8 and ds.category_of.shape == (ds.num_concepts,)
    item = ds[2]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert torch.equal(item["labels"], labs[2][None].int()) and item["image_labels"].tolist() == [3]
    np.testing.assert_array_equal(ds.load_image_uint8(2), imgs[2].numpy())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(item["image"], (imgs[2].permute(2, 0, 1) / 255 - mean) / std)
    with pytest.raises(ValueError, match="labels must be"):
        TensorSegmentationDataset(imgs, labs[:4])
    with pytest.raises(TypeError, match="integer"):
        TensorSegmentationDataset(imgs, labs.float())


def test_folder_dataset(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rng = np.random.default_rng(1)
    labs = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "img" / f"x{i}.jpg")
        lab = rng.integers(0, 600, (12, 12))
        rgb = np.zeros((12, 12, 3), np.uint8)
        rgb[..., 0], rgb[..., 1] = lab % 256, lab // 256
        Image.fromarray(rgb).save(tmp_path / "lab" / f"x{i}.png")
        labs.append(lab)
    ds = FolderSegmentationDataset(tmp_path / "img", tmp_path / "lab", num_concepts=600)
    assert len(ds) == 3 and ds.image_path(1).name == "x1.jpg"
    np.testing.assert_array_equal(ds[1]["labels"][0].numpy(), labs[1])
    small = FolderSegmentationDataset(tmp_path / "img", tmp_path / "lab", num_concepts=600, image_size=6)
    assert small[0]["image"].shape == (3, 6, 6)
    np.testing.assert_array_equal(small[0]["labels"][0].numpy(), labs[0][::2, ::2])
    with pytest.raises(ValueError, match=r"x0\.png: label id"):
        FolderSegmentationDataset(tmp_path / "img", tmp_path / "lab", num_concepts=10)[0]
    (tmp_path / "lab" / "x2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"x2\.png"):
        FolderSegmentationDataset(tmp_path / "img", tmp_path / "lab", num_concepts=600)
