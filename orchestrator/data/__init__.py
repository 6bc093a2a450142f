"""Data: datasets, validation split, transforms and loaders (plain PyTorch; no ray/mlflow).

Datasets (``DataConfig.dataset``): ``fashion_mnist`` (default; provisioned from
the Debian package ``dataset-fashion-mnist``, local files or a download, see
:mod:`.provision`), ``digits`` (scikit-learn, no download), ``cifar10`` /
``cifar100`` (local python-pickle directory) and ``imagefolder``.

Every dataset item is ``(image, label, index)``; :func:`build_data` returns a
:class:`DataBundle` (train, train_eval, val, test, ...), :func:`make_loader`
the matching DataLoaders. The data root is ``data.root``, else
``$DISTILL_DATA_ROOT``, else ``~/.cache/distill-orchestrator/data``
(:func:`default_data_root`).
"""

from orchestrator.data.common import DatasetNotFoundError, default_data_root
from orchestrator.data.datasets import DataBundle, build_data
from orchestrator.data.loaders import make_loader, set_epoch
from orchestrator.data.split import UNLABELLED


def __getattr__(name: str):
    # imported lazily so that `python -m orchestrator.data.provision` does not
    # find its own module already imported by the package (runpy warning)
    if name == "ensure_fashion_mnist":
        from orchestrator.data.provision import ensure_fashion_mnist

        return ensure_fashion_mnist
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataBundle",
    "DatasetNotFoundError",
    "UNLABELLED",
    "build_data",
    "default_data_root",
    "ensure_fashion_mnist",
    "make_loader",
    "set_epoch",
]
