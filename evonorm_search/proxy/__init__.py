"""The proxy task: the K architectures a candidate layer is trained in (:mod:`.architectures`), the
CIFAR-10 data (:mod:`.data`), and the Lightning module that trains one of them (:mod:`.classifier`)."""
from .architectures import ARCHITECTURES, ArchitectureConfig
from .classifier import ProxyClassifier, train_and_validate
from .data import CIFAR_MEAN, CIFAR_STD, CIFAR10DataModule, synthetic_cifar

__all__ = ["ARCHITECTURES", "ArchitectureConfig", "CIFAR10DataModule", "CIFAR_MEAN", "CIFAR_STD", "ProxyClassifier",
           "synthetic_cifar", "train_and_validate"]
