"""The model zoo's code: one class per family; the named variants are the YAML files in conf/model/."""

from cnnlab.models.lenet import LeNet5
from cnnlab.models.resnet import ResNet

__all__ = ["LeNet5", "ResNet"]
