"""The original report's Q1 numbers (SPEC.md, marked *ref*), shown beside ours in the Q1
reports. Keyed by question, then by the swept parameter."""

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
}
