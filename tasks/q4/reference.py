"""The original report's Q4 numbers (SPEC.md, marked *ref*): YOLOv5s and YOLOv5x on the
validation split, overall and (YOLOv5s) per class as (mAP@0.5, mAP@0.5:0.95)."""

from __future__ import annotations

REFERENCE: dict[str, dict] = {
    "yolov5s": {"precision": 0.965, "recall": 0.998, "mAP50": 0.925, "mAP50-95": 0.573,
                "train_time_s": 1 * 3600 + 16 * 60 + 23, "epochs": 100, "imgsz": 416,
                "per_class": {"blue": (0.995, 0.600), "green": (0.989, 0.574),
                              "red": (0.996, 0.657), "vline": (0.977, 0.826),
                              "white": (0.601, 0.165), "yellow": (0.994, 0.615)}},
    "yolov5x": {"precision": 0.965, "recall": 0.928, "mAP50": 0.937, "mAP50-95": 0.582,
                "train_time_s": 1 * 3600 + 16 * 60 + 41, "epochs": 100, "imgsz": 416},
}
# The data the reference trained on (SPEC Q4): the Roboflow export's validation split.
DATASET = {"val_images": 58, "val_objects": 1000, "objects_approximate": True,
           "what": "the Roboflow 'shapes' export", "pretrained": True}
