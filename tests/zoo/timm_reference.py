"""timm's ResNetV2 (`timm/models/resnetv2.py`) as the outside reference of
the BiT tests, importable without torchvision. Test-only: needs torch and
timm (`pip install timm --no-deps`).

timm imports torchvision when it is imported: `timm/__init__` imports every
model, `beit.py` imports `timm.data`, whose transforms import
`torchvision.transforms`; and `timm/layers/norm_act.py` and
`create_norm.py` import `torchvision.ops.misc.FrozenBatchNorm2d`. With the
CPU torch wheel pinned here, PyPI's torchvision does not load ("operator
torchvision::nms does not exist"). So where `import timm` fails, `load()`
imports only what ResNetV2 needs, unchanged: the packages `timm`,
`timm.models` and `timm.data` are created without running their
`__init__` (so no other model and no transform is imported), `timm.data`
gets its constants, and `torchvision.ops.misc.FrozenBatchNorm2d` is a class
that raises if built (only timm's BN-freezing helpers build it; ResNetV2
never does). timm's `layers`, `ResNetV2`, `StdConv2d`, `GroupNormAct` and
its BiT npz loader (`_load_weights`) are timm's own code.
"""

import importlib
import importlib.machinery
import importlib.util
import pathlib
import sys
import types


def _package(name, directory):
    module = types.ModuleType(name)
    module.__path__ = [str(directory)]
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(directory)]
    sys.modules[name] = module
    return module


def _without_torchvision():
    import torch

    class FrozenBatchNorm2d(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("torchvision is not available: FrozenBatchNorm2d is a stand-in")

    stubs = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    stubs["torchvision"].ops, stubs["torchvision.ops"].misc = stubs["torchvision.ops"], stubs["torchvision.ops.misc"]
    stubs["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    saved = {name: sys.modules.get(name) for name in stubs}
    for name in list(sys.modules):  # a broken torchvision, half imported
        if name == "timm" or name.startswith(("timm.", "torchvision")):
            del sys.modules[name]
    sys.modules.update(stubs)
    try:
        root = pathlib.Path(importlib.util.find_spec("timm").submodule_search_locations[0])
        timm = _package("timm", root)
        timm.__version__ = importlib.import_module("timm.version").__version__
        _package("timm.models", root / "models")
        data = _package("timm.data", root / "data")
        constants = importlib.import_module("timm.data.constants")
        for name in dir(constants):
            if name.isupper():
                setattr(data, name, getattr(constants, name))
        return importlib.import_module("timm.models.resnetv2")
    finally:  # only timm's modules keep the stand-in
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load():
    """`timm.models.resnetv2`, or None when torch or timm is not installed."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
        return None
    if "timm.models.resnetv2" in sys.modules:
        return sys.modules["timm.models.resnetv2"]
    try:
        return importlib.import_module("timm.models.resnetv2")
    except (ImportError, RuntimeError):  # no torchvision, or one built for another torch
        return _without_torchvision()
