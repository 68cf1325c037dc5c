"""The model zoo's code: one class per family; the named variants are the YAML files in conf/model/."""

from cnnlab.models.alexnet import AlexNet
from cnnlab.models.densenet import DenseNet
from cnnlab.models.fastnet import FastNet
from cnnlab.models.fractalnet import FractalNet
from cnnlab.models.googlenet import GoogLeNet
from cnnlab.models.inception_v3 import InceptionV3
from cnnlab.models.lenet import LeNet5
from cnnlab.models.nin import NIN
from cnnlab.models.resnet import ResNet
from cnnlab.models.vgg import VGG

__all__ = ["AlexNet", "DenseNet", "FastNet", "FractalNet", "GoogLeNet", "InceptionV3", "LeNet5", "NIN", "ResNet", "VGG"]
