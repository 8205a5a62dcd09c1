"""Images per second of a finished flow run's trainings, read from its manifests.

    python -m bench.gpu_report --store URI --flow q1-mlp --samples 60000
                               [--project-epochs 10 --project-repeats 3]

Reads ``runs/<flow>/latest.json`` (or ``--run-id``), then each training's manifest
(``train/time_s``: the training epochs' own time, evaluation excluded; ``epochs``). With
``--project-*`` also prints what the whole sweep's training would take at those sizes.
Used by ``bench/gpu_check.sh``.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--flow", required=True)
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--samples", type=int, required=True, help="training images per epoch")
    ap.add_argument("--project-epochs", type=int, default=None)
    ap.add_argument("--project-repeats", type=int, default=1)
    args = ap.parse_args(argv)

    from tasks.core.store import join, open_store

    st = open_store(args.store)
    run_id = args.run_id or st.get_json(join("runs", args.flow, "latest.json"))["run_id"]
    flow = st.get_json(join("runs", args.flow, run_id, "manifest.json"))
    total_images, total_s = 0, 0.0
    for name, prefix in flow["train"].items():
        m = st.get_json(join(prefix, "manifest.json"))["metrics"]
        epochs, sec = int(m.get("epochs") or 1), float(m.get("train/time_s") or 0.0)
        images = args.samples * epochs
        total_images += images
        total_s += sec
        rate = images / sec if sec > 0 else float("nan")
        print(f"IMAGES {args.flow} {name}: {images} images ({epochs} epochs) in {sec:.2f} s = "
              f"{rate:,.0f} images/s (device {m.get('device', '?')})")
    rate = total_images / total_s if total_s > 0 else float("nan")
    print(f"THROUGHPUT {args.flow}: {len(flow['train'])} trainings, {total_images} images in "
          f"{total_s:.1f} s of training = {rate:,.0f} images/s")
    if args.project_epochs:
        epochs = max(int(flow["config"].get("epochs", 1)), 1)
        projected = total_s * args.project_epochs / epochs * args.project_repeats
        print(f"PROJECTED {args.flow}: {args.project_epochs} epochs x {args.project_repeats} "
              f"seeds of these {len(flow['train'])} cells = {projected / 60:.1f} min of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
