"""The original report's numbers (SPEC.md, marked *ref*), shown beside ours in every report."""

from __future__ import annotations

REFERENCE: dict[str, dict] = {
    "q1-mlp": {
        "batch_size": {"best": 256,
                       "note": "batch 256 gave the best test accuracy and lowest test loss"},
        "activation": {"best": None,
                       "note": "the report shows ReLU, Tanh and Sigmoid side by side and names "
                               "no winner in its text"},
        "loss": {"best": "cross_entropy", "note": "CrossEntropy clearly better than MSE"},
    },
    "q1-cnn": {
        "dropout": {"best": 0.4, "dev/accuracy": 0.9138, "test/accuracy": 0.9093,
                    "note": "best dropout rate 0.4 with dev 91.38 % / test 90.93 %"},
    },
    "q2-transfer": {
        "resnet18": {"test/accuracy": [0.7285, 0.7603, 0.7781, 0.7797, 0.7799, 0.7845, 0.7908,
                                       0.7870, 0.7914, 0.7830],
                     "total_params": 11_689_512, "finetune_fixed": "1 of 3 (33.33 %)"},
        "vgg16": {"test/accuracy": [0.9113, 0.9148, 0.9113, 0.9147, 0.9178, 0.9181, 0.9165,
                                    0.9135, 0.9146, 0.9154],
                  "total_params": 138_357_544, "finetune_fixed": "0 of 3"},
        "note": "VGG16 ahead of ResNet18 by more than 12 points",
    },
    "q4-yolo": {
        "yolov5s": {"precision": 0.965, "recall": 0.998, "mAP50": 0.925, "mAP50-95": 0.573,
                    "train_time_s": 1 * 3600 + 16 * 60 + 23,
                    "per_class": {"blue": (0.995, 0.600), "green": (0.989, 0.574),
                                  "red": (0.996, 0.657), "vline": (0.977, 0.826),
                                  "white": (0.601, 0.165), "yellow": (0.994, 0.615)}},
        "yolov5x": {"precision": 0.965, "recall": 0.928, "mAP50": 0.937, "mAP50-95": 0.582,
                    "train_time_s": 1 * 3600 + 16 * 60 + 41},
    },
}
