"""The papers' published numbers that `cnnlab.report` prints beside ours, keyed by model config name, with sources.

Errors are percentages on ImageNet val (ILSVRC-2012) or the CIFAR-10 test set, as each paper states them; None =
not published. Sources: /work/shared/REFERENCE.md sections 1 and 3, which quote the papers, and the papers
themselves where named.
"""

# He et al. 2016 (arXiv 1512.03385), Table 6: CIFAR-10 test error %. The plain nets appear only in Figure 6 (curves).
# ResNet-110 is the best of 5 runs; the paper's mean +- std over those 5 is 6.61 +- 0.16.
HE2016_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                 "resnet1202": 7.93}
HE2016_TABLE6_NOTE = "ResNet-110: best of 5 runs (6.61 ± 0.16 over the 5)"

# Xie et al. 2017 (arXiv 1611.05431), Table 3: ImageNet val top-1 error %, single 224 crop, complexity preserved.
XIE2017_TABLE3 = {
    "resnext50_1x64d": 23.9, "resnext50_2x40d": 23.0, "resnext50_4x24d": 22.6, "resnext50_8x14d": 22.3,
    "resnext50_32x4d": 22.2,
    "resnext101_1x64d": 22.0, "resnext101_2x40d": 21.7, "resnext101_4x24d": 21.4, "resnext101_8x14d": 21.3,
    "resnext101_32x4d": 21.2,
}

# Single models on ImageNet val: (top-1, top-5) error % at 1 crop (shorter side 256, center 224) and at 10 crops
# (4 corners + center and their flips, softmax averaged), and torchvision's released weights at 1 crop (its acc@1,
# acc@5; error = 100 - acc). Sources per row; None = not published.
ILSVRC = {
    "alexnet": dict(source="Krizhevsky et al. 2012, Table 2 (1 CNN, val, 10 patches)", crop1=(None, None),
                    crop10=(40.7, 18.2), torchvision=None),
    "alexnet_owt": dict(source="torchvision (Krizhevsky 2014, one weird trick)", crop1=(None, None),
                        crop10=(None, None), torchvision=(56.522, 79.066)),
    "vgg16": dict(source="He et al. 2016, Table 3 (10-crop); KaimingHe/deep-residual-networks README (1-crop)",
                  crop1=(28.5, 9.9), crop10=(28.07, 9.33), torchvision=(71.592, 90.382)),
    "googlenet": dict(source="Szegedy et al. 2015, Table 3 (1 model: 1 crop, 10 crops); He et al. 2016, Table 3",
                      crop1=(None, 10.07), crop10=(None, 9.15), torchvision=(69.778, 89.530)),
    "plain18": dict(source="He et al. 2016, Table 2", crop1=(None, None), crop10=(27.94, None), torchvision=None),
    "plain34": dict(source="He et al. 2016, Tables 2 and 3", crop1=(None, None), crop10=(28.54, 10.02),
                    torchvision=None),
    "resnet18": dict(source="He et al. 2016, Table 2", crop1=(None, None), crop10=(27.88, None),
                     torchvision=(69.758, 89.078)),
    "resnet34": dict(source="He et al. 2016, Table 3 (option A)", crop1=(None, None), crop10=(25.03, 7.76),
                     torchvision=(73.314, 91.420)),
    "resnet50": dict(source="He et al. 2016, Table 3; released models (1-crop)", crop1=(24.7, 7.8),
                     crop10=(22.85, 6.71), torchvision=(76.130, 92.862)),
    "resnet101": dict(source="He et al. 2016, Table 3; released models (1-crop)", crop1=(23.6, 7.1),
                      crop10=(21.75, 6.05), torchvision=(77.374, 93.546)),
    "resnet152": dict(source="He et al. 2016, Table 3; released models (1-crop)", crop1=(23.0, 6.7),
                      crop10=(21.43, 5.71), torchvision=(78.312, 94.046)),
    "resnext50_32x4d": dict(source="Xie et al. 2017, Table 3", crop1=(22.2, None), crop10=(None, None),
                            torchvision=(77.618, 93.698)),
    "densenet121": dict(source="Huang et al. 2017, Table 3", crop1=(25.02, 7.71), crop10=(23.61, 6.66),
                        torchvision=(74.434, 91.972)),
}

# ILSVRC classification winners, top-5 test error % (REFERENCE.md section 3, as the lectures tabulate them).
ILSVRC_WINNERS = [
    ("SuperVision (AlexNet)", 2012, 16.4, "15.3 with ImageNet-22k; 1 CNN on val: top-1 40.7, top-5 18.2"),
    ("Clarifai (ZFNet)", 2013, 11.7, "11.2 with 22k"),
    ("VGG (2nd)", 2014, 7.32, ""),
    ("GoogLeNet (1st)", 2014, 6.67, "7 models, 144 crops"),
    ("ResNet (1st)", 2015, 3.57, "ensemble"),
    ("human expert", None, 5.1, ""),
]
