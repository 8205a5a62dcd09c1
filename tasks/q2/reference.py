"""The original report's Q2 numbers (SPEC.md, marked *ref*): per-epoch test accuracy,
parameter counts and fine-tuning results of ResNet18 and VGG16."""

from __future__ import annotations

REFERENCE: dict[str, dict] = {
    "resnet18": {"test/accuracy": [0.7285, 0.7603, 0.7781, 0.7797, 0.7799, 0.7845, 0.7908,
                                   0.7870, 0.7914, 0.7830],
                 "total_params": 11_689_512, "finetune_fixed": (1, 3)},
    "vgg16": {"test/accuracy": [0.9113, 0.9148, 0.9113, 0.9147, 0.9178, 0.9181, 0.9165,
                                0.9135, 0.9146, 0.9154],
              "total_params": 138_357_544, "finetune_fixed": (0, 3)},
}
