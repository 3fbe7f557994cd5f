"""PyTorch state dicts (zfraw.io.torch): a torchvision-layout AlexNet built here in torch
(torchvision itself is not needed) against torch's own forward."""
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'zfraw[torch]')")
tnn = torch.nn

from zfraw import models, nn  # noqa: E402
from zfraw.io import torch as ztorch  # noqa: E402


class TorchvisionAlexNet(tnn.Module):
    """torchvision.models.AlexNet, written out (the same modules, names and order)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(3, 64, 11, 4, 2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(64, 192, 5, padding=2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((6, 6))
        self.classifier = tnn.Sequential(
            tnn.Dropout(0.5), tnn.Linear(256 * 6 * 6, 4096), tnn.ReLU(inplace=True),
            tnn.Dropout(0.5), tnn.Linear(4096, 4096), tnn.ReLU(inplace=True), tnn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def alexnet_pth(tmp_path_factory):
    torch.manual_seed(0)
    model = TorchvisionAlexNet(num_classes=1000).eval()
    path = tmp_path_factory.mktemp("pth") / "alexnet-test.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_torchvision_alexnet_matches_torchs_forward(alexnet_pth):
    model, path = alexnet_pth
    net = ztorch.load(path)
    assert net.names == models.alexnet_torchvision(init_std=None).names and net.names[:3] == ["conv1", "relu1", "pool1"]
    assert net.preprocessing.name == "alexnet_torchvision" and net.preprocessing.channel_order == "RGB"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    ours = net.forward(x.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the 6x6 maps before the classifier: torch's adaptive pool was the identity
    with torch.no_grad():
        feats = model.features(x).numpy()
    np.testing.assert_allclose(net.activations["pool5"], feats, rtol=1e-4, atol=1e-4 * np.abs(feats).max())


def test_a_state_dict_in_memory_and_the_name_map_hook():
    torch.manual_seed(1)
    small = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                           tnn.Linear(4 * 4 * 4, 5)).eval()
    net = nn.Sequential([("conv1", nn.Conv2d(3, 4, 3, pad=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
                         ("flatten", nn.Flatten()), ("fc2", nn.Linear(64, 5))], input_shape=(3, 8, 8))
    ztorch.load(small.state_dict(), net=net, name_map={"0": "conv1", "4": "fc2"})
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x.numpy()), small(x).numpy(), rtol=1e-5, atol=1e-6)
    # a function as the map, skipping nothing
    ztorch.load({k: v.numpy() for k, v in small.state_dict().items()}, net=net,
                name_map=lambda key: {"0": "conv1", "4": "fc2"}[key.split(".")[0]] + "." + key.split(".")[1][0])


def test_bad_files_and_state_dicts_name_the_file_and_key(tmp_path, alexnet_pth):
    _, good = alexnet_pth
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100000])
    for path in (text, truncated):
        with pytest.raises(ValueError, match="is not a PyTorch state dict") as info:
            ztorch.load(path)
        assert str(path) in str(info.value)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="not a state dict.*Tensor"):
        ztorch.load(tensor)
    code = tmp_path / "code.pth"
    with open(code, "wb") as fh:
        pickle.dump({"x": np.zeros(2)}, fh, protocol=2)   # a plain pickle: weights_only refuses it
    with pytest.raises(ValueError, match="weights_only"):
        ztorch.load(code)
    # another architecture (VGG-like keys)
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
           "classifier.0.weight": torch.zeros(10, 64), "classifier.0.bias": torch.zeros(10)}
    with pytest.raises(ValueError, match=r"not a alexnet_torchvision state dict: missing keys \['features.3"):
        ztorch.load(vgg)
    # the right keys, one wrong shape
    state = torch.load(good, weights_only=True)
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    with pytest.raises(ValueError, match=r"'features.3.weight' has shape \(192, 64, 3, 3\), but conv2.w needs "
                                         r"\(192, 64, 5, 5\)"):
        ztorch.load(state)
    state = torch.load(good, weights_only=True)
    state["features.1.running_mean"] = torch.zeros(3)
    with pytest.raises(ValueError, match="'features.1.running_mean' has no place"):
        ztorch.load(state)
    with pytest.raises(FileNotFoundError):
        ztorch.load(tmp_path / "missing.pth")


def test_other_class_counts_come_from_the_classifier():
    torch.manual_seed(2)
    model = TorchvisionAlexNet(num_classes=7)
    net = ztorch.load(model.state_dict())
    assert net["fc8"].out_features == 7
