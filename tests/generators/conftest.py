"""Weight files for every generator: the packaged DCGAN, a tiny random BigGAN-deep, a random DeePSiM."""

import json
import shutil

import pytest
import torch

import generators
from generators.dcgan import packaged_weights


@pytest.fixture(scope="session")
def weights_dirs(tmp_path_factory):
    """name -> (directory, file) holding that generator's weights under its standard file name."""
    from generators.biggan import TINY_CONFIG, random_network
    from generators.deepsim import WEIGHTS_FILE, DeePSiMFc6

    root = tmp_path_factory.mktemp("weights")
    biggan = random_network(TINY_CONFIG)
    with torch.no_grad():
        for name, buffer in biggan.named_buffers():  # truncation-dependent BN statistics
            if name.endswith("running_means"):
                buffer.normal_(0.0, 0.3)
    (root / "biggan").mkdir()
    torch.save(biggan.state_dict(), root / "biggan" / "pytorch_model.bin")
    (root / "biggan" / "config.json").write_text(json.dumps(TINY_CONFIG))

    (root / "deepsim").mkdir()
    torch.save(DeePSiMFc6().state_dict(), root / "deepsim" / WEIGHTS_FILE)

    (root / "dcgan").mkdir()
    shutil.copy(packaged_weights(), root / "dcgan" / "weights.tar")
    return {
        "dcgan-faces": (root / "dcgan", root / "dcgan" / "weights.tar"),
        "biggan-deep-128": (root / "biggan", root / "biggan" / "pytorch_model.bin"),
        "deepsim-fc6": (root / "deepsim", root / "deepsim" / WEIGHTS_FILE),
    }


@pytest.fixture(scope="session")
def loaded(weights_dirs):
    """name -> generator loaded (once per session) from its weights directory."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = generators.load(name, device="cpu", weights=weights_dirs[name][0])
        return cache[name]

    return get
