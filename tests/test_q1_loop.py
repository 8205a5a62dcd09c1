"""The Q1 training path at the compute limit (splits prepared once, metrics kept on the
device, CUDA graphs) computes what a plain per-batch reference loop computes: the same
weights bit for bit, the same accuracies, losses within float summation order (rel 1e-6);
and the benchmark's pure-compute contender steps exactly as often as ours."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.ml import loop
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q1.data import generate_arrays
from tasks.q1.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    make_preprocess,
    prepare_split,
)

LOSS_REL = 1e-6  # the loss is summed in another order (float64 at the end vs per batch)


@pytest.fixture(scope="module")
def raw() -> Split:
    images, labels = generate_arrays(230, seed=3)
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype("int64")))


def reference_epoch(model, raw: Split, cfg: TrainConfig, optimizer, generator,
                    drop_last: bool = False) -> dict[str, float]:
    """The textbook loop: per batch, gather the uint8 images, scale, flip, normalise, change
    layout, step, and add the metrics up in Python."""
    model.train()
    loss_fn = make_loss(cfg.loss, 10)
    n = len(raw)
    order = torch.randperm(n, generator=generator)
    stop = n - n % cfg.batch_size if drop_last else n
    total, correct, seen = 0.0, 0, 0
    for i in range(0, stop, cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        x = raw.x[idx].float() / 255.0
        if cfg.hflip:
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if cfg.normalize:
            x = (x - 0.5) / 0.5
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = raw.y[idx]
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
    return {"loss": total / seen, "accuracy": correct / seen}


CASES = {
    "mlp-dropout": dict(model="mlp", batch_size=32, dropout=0.3),
    "mlp-mse-b64": dict(model="mlp", batch_size=64, loss="mse"),
    "cnn_pool_bn-flip-dropout": dict(model="cnn_pool_bn", batch_size=32, dropout=0.4,
                                     hflip=True, normalize=True, channels_last=True),
    "cnn-flip": dict(model="cnn", batch_size=32, hflip=True, normalize=True,
                     channels_last=True),
    "cnn_pool_bn-contiguous": dict(model="cnn_pool_bn", batch_size=50, hflip=True,
                                   normalize=True),
}


def _fresh(cfg: TrainConfig):
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, build_optimizer(cfg, model)


@pytest.mark.parametrize("drop_last", [False, True], ids=["all", "drop_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_matches_reference_loop(raw, case, drop_last):
    # 230 samples: a partial last batch at every batch size used here
    cfg = TrainConfig(out="o", data="d", **CASES[case])
    ref_model, ref_opt = _fresh(cfg)
    model, opt = _fresh(cfg)
    split = prepare_split(cfg, raw)
    pre = make_preprocess(cfg)
    for epoch in (1, 2):
        torch.manual_seed(100 + epoch)  # flips and dropout, as classifier.train seeds them
        ref = reference_epoch(ref_model, raw, cfg, ref_opt, torch.Generator().manual_seed(epoch),
                              drop_last)
        torch.manual_seed(100 + epoch)
        out = train_one_epoch(model, split, batch_size=cfg.batch_size, optimizer=opt,
                              loss_fn=make_loss(cfg.loss, 10), preprocess=pre,
                              generator=torch.Generator().manual_seed(epoch),
                              drop_last=drop_last)
        assert out["accuracy"] == ref["accuracy"]
        assert out["loss"] == pytest.approx(ref["loss"], rel=LOSS_REL)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_prepared_split_is_the_per_batch_transform_bit_for_bit(raw):
    cfg = TrainConfig(out="o", data="d", model="cnn_pool_bn", normalize=True,
                      channels_last=True)
    ready = prepare_split(cfg, raw)
    per_batch = torch.cat([(raw.x[i:i + 32].float().div_(255.0).sub_(0.5).div_(0.5))
                           for i in range(0, len(raw), 32)])
    assert ready.x.dtype == torch.float32 and ready.x.shape == (230, 1, 28, 28)
    assert torch.equal(ready.x, per_batch)
    assert ready.x.is_contiguous(memory_format=torch.channels_last)
    assert float(ready.x.min()) >= -1.0 and float(ready.x.max()) <= 1.0
    assert ready.y is raw.y
    plain = prepare_split(TrainConfig(out="o", data="d"), raw)
    assert float(plain.x.min()) >= 0.0 and float(plain.x.max()) <= 1.0


def test_preprocess_flips_training_batches_only():
    cfg = TrainConfig(out="o", data="d", model="cnn", hflip=True)
    ramp = torch.arange(28.0).expand(64, 1, 28, 28).contiguous()
    torch.manual_seed(0)
    out = make_preprocess(cfg)(ramp, True)
    flipped = out[:, 0, 0, 0] == 27.0
    assert 10 < int(flipped.sum()) < 54  # p = 0.5 of 64
    assert torch.equal(out[flipped], ramp[flipped].flip(3))
    assert torch.equal(out[~flipped], ramp[~flipped])
    assert make_preprocess(cfg)(ramp, False) is ramp
    assert make_preprocess(TrainConfig(out="o", data="d"))(ramp, True) is ramp


@pytest.mark.parametrize("case", ["mlp-dropout", "cnn_pool_bn-flip-dropout"])
def test_graphed_path_rehearsed_on_cpu_matches_eager(raw, case):
    """The CUDA-graph path without capture: eager first batch, three warm-up steps whose
    effects (weights, BatchNorm statistics, Adam state, RNG) are undone, then the step per
    batch through the on-device position counter: the same weights as the eager loop."""
    cfg = TrainConfig(out="o", data="d", **CASES[case])
    split = prepare_split(cfg, raw)
    pre = make_preprocess(cfg)
    loss_fn = make_loss(cfg.loss, 10)
    eager_model, eager_opt = _fresh(cfg)
    model, opt = _fresh(cfg)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        want = train_one_epoch(eager_model, split, batch_size=cfg.batch_size,
                               optimizer=eager_opt, loss_fn=loss_fn, preprocess=pre,
                               generator=torch.Generator().manual_seed(epoch))
        torch.manual_seed(epoch)
        model.train()
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch))
        targets = split.y.index_select(0, order)
        batches = list(zip(order.split(cfg.batch_size), targets.split(cfg.batch_size),
                           strict=True))
        tally = loop._Tally(len(batches))
        ran = loop._graphed_steps(model, split, order, batches, batch_size=cfg.batch_size,
                                  optimizer=opt, loss_fn=loss_fn, preprocess=pre,
                                  autocast=None, tally=tally, capture=False)
        assert ran is False  # rehearsed, not captured
        total, correct, seen = tally.totals(torch.device("cpu"))
        assert seen == len(split) and tally.graph_seen == (len(split) // cfg.batch_size - 1) \
            * cfg.batch_size
        assert correct / seen == want["accuracy"]
        assert total / seen == pytest.approx(want["loss"], rel=LOSS_REL)
    for (name, a), b in zip(eager_model.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(eager_opt.state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"])
               for p, q in zip(eager_model.parameters(), model.parameters(), strict=True))


def test_graphed_path_declines_small_epochs_and_uncapturable_optimizers(raw):
    cfg = TrainConfig(out="o", data="d", batch_size=64)  # 230 samples: 3 full batches
    split = prepare_split(cfg, raw)
    model, opt = _fresh(cfg)
    order = torch.arange(len(split))
    batches = list(zip(order.split(64), split.y.split(64), strict=True))
    kw = dict(batch_size=64, loss_fn=make_loss("cross_entropy", 10),
              preprocess=make_preprocess(cfg), autocast=None, tally=loop._Tally(len(batches)))
    assert loop._graphed_steps(model, split, order, batches, optimizer=opt, capture=False,
                               **kw) is None
    assert not opt.state  # nothing ran
    small = dict(kw, batch_size=16)
    batches = list(zip(order.split(16), split.y.split(16), strict=True))
    assert not opt.param_groups[0]["capturable"]  # CPU: build_optimizer leaves it off
    assert loop._graphed_steps(model, split, order, batches, optimizer=opt, capture=True,
                               **small) is None
    assert not opt.state


def test_cuda_graphs_option_is_ignored_on_cpu(tmp_path):
    from tasks.registry import run_task

    uri = f"file://{tmp_path}/store"
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 300,
                                            "n_test": 100}, uri).prefix
    cfg = {"data": data, "epochs": 2, "batch_size": 32, "device": "cpu", "model": "cnn_pool_bn",
           "hflip": True, "normalize": True, "dropout": 0.2, "dev_fraction": 0.5}
    a = run_task("classifier.train", {**cfg, "out": "r/a"}, uri)
    b = run_task("classifier.train", {**cfg, "out": "r/b", "cuda_graphs": True}, uri)
    strip = [{k: v for k, v in h.items() if "time" not in k} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if "time" not in k} for h in b.history]
    assert b.config["cuda_graphs"] is True


# ------------------------------------------------------------ the benchmark's contenders

@pytest.mark.parametrize(("model", "batch_size", "n"), [("mlp", 32, 100),
                                                       ("cnn_pool_bn", 32, 64)])
def test_bench_contenders_step_equally_often_on_equal_samples(tmp_path, model, batch_size, n):
    from bench.q1_epoch import OURS, OWN_PREFIX, PLAIN, PURE, build_contenders

    contenders, cfg = build_contenders(model, batch_size, n, tmp_path, torch.device("cpu"))
    assert cfg.batch_size == batch_size and cfg.channels_last == (model != "mlp")
    steps = {name: 0 for name in contenders}
    samples = {name: 0 for name in contenders}
    for name, c in contenders.items():
        c.optimizer.register_step_post_hook(
            lambda *_a, name=name: steps.__setitem__(name, steps[name] + 1))
        c.model.register_forward_pre_hook(
            lambda _m, args, name=name: samples.__setitem__(name, samples[name]
                                                             + args[0].shape[0]))
    for c in contenders.values():
        c.run()
    want = math.ceil(n / batch_size)
    names = (OURS, PURE, PLAIN, OWN_PREFIX + OURS, OWN_PREFIX + PURE)  # + the own-work pair
    assert steps == dict.fromkeys(names, want)
    assert samples == dict.fromkeys(names, n)


def test_pure_contender_batch_is_ready_model_input(tmp_path):
    from bench.q1_epoch import PURE, build_contenders, ready_batch

    contenders, cfg = build_contenders("cnn_pool_bn", 32, 64, tmp_path, torch.device("cpu"))
    images, labels = generate_arrays(32, seed=0)
    xb, yb = ready_batch(cfg, torch.from_numpy(images).unsqueeze(1),
                         torch.from_numpy(labels.astype("int64")), torch.device("cpu"))
    assert xb.dtype == torch.float32 and xb.is_contiguous(memory_format=torch.channels_last)
    assert -1.0 <= float(xb.min()) < 0.0 < float(xb.max()) <= 1.0  # normalised
    inputs = []
    contenders[PURE].model.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    contenders[PURE].run()
    assert len(inputs) == 2 and inputs[0].data_ptr() == inputs[1].data_ptr()  # one batch


# ------------------------------------------------------------ on a GPU (skipped without)

@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (the gpu tests run where torch.cuda.is_available())")
    return torch.device("cuda")


def _cuda_epochs(cfg: TrainConfig, raw: Split, device, graphed: bool, epochs: int = 2):
    split = prepare_split(cfg, raw.to(device))
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = build_optimizer(cfg, model)  # cuda_graphs on CUDA: a capturable Adam
    assert opt.param_groups[0]["capturable"]
    out = []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch)
        out.append(train_one_epoch(model, split, batch_size=cfg.batch_size, optimizer=opt,
                                   loss_fn=make_loss(cfg.loss, 10),
                                   preprocess=make_preprocess(cfg),
                                   generator=torch.Generator().manual_seed(epoch),
                                   cuda_graph=graphed))
    return out, model


@pytest.mark.gpu
def test_cuda_graph_epochs_match_eager_on_cuda(raw, cuda_device, monkeypatch, caplog):
    # no flips, no dropout: no random draws, so graph and eager run the same kernels on
    # the same data (tolerances: cuDNN may accumulate in another order)
    cfg = TrainConfig(out="o", data="d", model="cnn_pool_bn", batch_size=32, normalize=True,
                      channels_last=True, cuda_graphs=True)
    replays = {"n": 0}
    real = torch.cuda.CUDAGraph.replay

    def counting(self):
        replays["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting)
    eager, eager_model = _cuda_epochs(cfg, raw, cuda_device, graphed=False)
    assert replays["n"] == 0
    graphed, model = _cuda_epochs(cfg, raw, cuda_device, graphed=True)
    assert replays["n"] == 2 * (230 // 32 - 1)  # every full batch but the first, per epoch
    assert not [r for r in caplog.records if "cuda_graph" in r.getMessage()]
    for a, b in zip(eager, graphed, strict=True):
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=2 / 230)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    for (name, a), b in zip(eager_model.state_dict().items(), model.state_dict().values(),
                            strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5), name


@pytest.mark.gpu
def test_cuda_graph_epochs_with_flips_and_dropout_are_deterministic(raw, cuda_device):
    cfg = TrainConfig(out="o", data="d", **CASES["cnn_pool_bn-flip-dropout"], cuda_graphs=True)
    first, m1 = _cuda_epochs(cfg, raw, cuda_device, graphed=True)
    second, m2 = _cuda_epochs(cfg, raw, cuda_device, graphed=True)
    assert [r["accuracy"] for r in first] == [r["accuracy"] for r in second]
    assert all(math.isfinite(r["loss"]) for r in first)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graphs_task_trains_and_evaluates(tmp_path, cuda_device):
    from tasks.registry import run_task

    uri = f"file://{tmp_path}/store"
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 600,
                                            "n_test": 200}, uri).prefix
    t = run_task("classifier.train", {"out": "r/t", "data": data, "model": "cnn_pool_bn",
                                      "epochs": 2, "device": "cuda", "batch_size": 32,
                                      "hflip": True, "normalize": True, "dropout": 0.2,
                                      "dev_fraction": 0.5, "cuda_graphs": True}, uri)
    assert t.history[-1]["train/loss"] < t.history[0]["train/loss"]
    e = run_task("classifier.evaluate", {"out": "r/e", "train": "r/t", "device": "cuda"}, uri)
    assert e.metrics["test/accuracy"] == pytest.approx(t.metrics["test/accuracy"])
