"""Every published number `cnnlab.report` prints beside ours, in one index. Each paper's numbers live beside the table
code that prints them (cnnlab.report.<paper>), with their sources; this module only gathers them.

Errors are percentages on ImageNet val (ILSVRC-2012), the CIFAR-10 or the MNIST test set, as each paper states them.
"""

from cnnlab.report.he2016 import TABLE6 as HE2016_TABLE6
from cnnlab.report.he2016 import TABLE6_NOTE as HE2016_TABLE6_NOTE
from cnnlab.report.ilsvrc import ILSVRC
from cnnlab.report.ilsvrc import WINNERS as ILSVRC_WINNERS
from cnnlab.report.recipes import RECIPES
from cnnlab.report.xie2017 import TABLE3 as XIE2017_TABLE3

__all__ = ["HE2016_TABLE6", "HE2016_TABLE6_NOTE", "ILSVRC", "ILSVRC_WINNERS", "RECIPES", "XIE2017_TABLE3"]
