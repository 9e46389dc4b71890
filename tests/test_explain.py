"""GradCAM / ScoreCAM: shapes, mapping, exactness vs pytorch-grad-cam, threads, hooks, localisation.

Tiny variants at 64 px. The full-size speed measurement lives in ``model_zoo.bench``
(``python -m model_zoo.bench``), not here.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from model_zoo import explain, imaging
from model_zoo.errors import InputError
from model_zoo.locks import model_lock
from model_zoo.members import FAMILIES, family_spec

S = 64


@pytest.fixture(scope="module")
def tiny() -> dict[str, tuple]:
    """family -> (spec, eval model, input batch of 4 different cases)."""
    torch.manual_seed(0)
    out = {}
    for i, family in enumerate(FAMILIES):
        spec = family_spec(family, variant="tiny", input_size=S)
        model = spec.build_model().eval()
        gen = torch.Generator().manual_seed(100 + i)
        xs = torch.randn(4, 3, S, S, generator=gen)
        out[family] = (spec, model, xs)
    return out


def _all_hooks_empty(model: torch.nn.Module) -> bool:
    for module in model.modules():
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
        ):
            if getattr(module, name, None):
                return False
    return True


def _check_map(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.shape == shape
    assert a.dtype == np.float32
    assert np.isfinite(a).all()
    assert a.min() >= 0.0 and a.max() <= 1.0


# ----------------------------------------------------------------------------- shapes, mapping


@pytest.mark.parametrize("family", FAMILIES)
def test_heatmaps_on_input_roi_and_image(tiny, family):
    spec, model, xs = tiny[family]
    x = xs[:1]
    g = explain.gradcam(spec, model, x)
    s = explain.scorecam(spec, model, x, top_k=8)
    for heat in (g, s):
        _check_map(heat.input_map, (S, S))
        assert heat.member_id == spec.member_id
        assert heat.details["target"] == "logit of the positive class"
        assert not heat.input_map.flags.writeable  # shared via the cache: must be immutable
        if not heat.details["empty"]:
            assert heat.input_map.max() == pytest.approx(1.0, abs=1e-5)
    assert g.method == "GradCAM" and not g.approximate
    n = s.details["channels"]
    assert s.approximate and s.method == f"ScoreCAM (approx.: top-k=8 of {n} channels by mean activation)"
    assert s.details["scored_channels"] == 8
    # The model's own logit is reported (same as a plain forward).
    with torch.inference_mode():
        assert g.details["logit"] == pytest.approx(float(model(x)), abs=1e-5)

    # A 100 x 100 crop inside a 130 (W) x 150 (H) image.
    crop_box = (20.0, 35.0, 120.0, 135.0)
    roi_map, image_map = explain.to_roi_and_image(g, crop_box, (130, 150))
    _check_map(roi_map, (100, 100))
    _check_map(image_map, (150, 130))
    assert np.array_equal(image_map[35:135, 20:120], roi_map)
    outside = image_map.copy()
    outside[35:135, 20:120] = 0
    assert not outside.any()
    # The hottest input pixel lands at the matching place in the image (scale 100/64).
    r, c = np.unravel_index(np.argmax(g.input_map), g.input_map.shape)
    rr, cc = np.unravel_index(np.argmax(roi_map), roi_map.shape)
    assert abs(rr - (r + 0.5) * 100 / S) <= 3 and abs(cc - (c + 0.5) * 100 / S) <= 3


def test_gradcam_works_inside_callers_no_grad_contexts(tiny):
    spec, model, xs = tiny["swin"]
    plain = explain.gradcam(spec, model, xs[:1]).input_map
    with torch.inference_mode():
        x_inf = xs[:1].clone()  # an inference tensor
        in_inference = explain.gradcam(spec, model, x_inf).input_map
    with torch.no_grad():
        in_no_grad = explain.gradcam(spec, model, xs[:1]).input_map
    np.testing.assert_allclose(in_inference, plain, atol=1e-6)
    np.testing.assert_allclose(in_no_grad, plain, atol=1e-6)
    assert torch.is_grad_enabled()  # the caller's grad mode is restored


def test_mapping_rejects_bad_boxes(tiny):
    spec, model, xs = tiny["vit"]
    g = explain.gradcam(spec, model, xs[:1])
    with pytest.raises(InputError):
        explain.to_roi_and_image(g, (10.5, 0, 50, 40), (100, 100))  # not integer
    with pytest.raises(InputError):
        explain.to_roi_and_image(g, (60, 0, 120, 60), (100, 100))  # outside the image
    with pytest.raises(InputError):
        explain.to_roi_and_image(np.zeros((4, 5)), (0, 0, 10, 10), (100, 100))


def test_bad_inputs_raise_clear_errors(tiny):
    spec, model, xs = tiny["efficientnet_b3"]
    with pytest.raises(InputError, match=r"shape \(1, 3, 64, 64\)"):
        explain.gradcam(spec, model, xs)  # a batch of 4
    with pytest.raises(InputError):
        explain.scorecam(spec, model, xs[:1, :, :32, :32])
    with pytest.raises(InputError):
        explain.scorecam(spec, model, xs[:1], top_k=0)
    bad = xs[:1].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="finite"):
        explain.gradcam(spec, model, bad)
    training = spec.build_model().train()
    with pytest.raises(ValueError, match="training mode"):
        explain.gradcam(spec, training, xs[:1])


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_equals_pytorch_grad_cam(tiny, family):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    spec, model, xs = tiny[family]
    x = xs[1:2]
    ours = explain.gradcam(spec, model, x).input_map
    with GradCAM(model=model, target_layers=[spec.cam_target_layer(model)], reshape_transform=spec.reshape_activations) as cam:
        ref = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])[0]
    model.zero_grad(set_to_none=True)  # the library's backward wrote parameter grads
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("family", ["efficientnet_b3", "vit", "swin"])
def test_scorecam_with_all_channels_equals_pytorch_grad_cam(tiny, family):
    spec, model, xs = tiny[family]
    if family == "efficientnet_b3":
        # bn2 has 256 channels (slow for plain ScoreCAM in a unit test); blocks.3 is a
        # (B, C, H, W) layer with 48 channels on a 4x4 grid.
        spec = spec.replace(cam_layer="blocks.3")
    x = xs[2:3]
    ref = explain.naive_scorecam(spec, model, x)
    exact = explain.scorecam(spec, model, x, top_k=None, batch_size=48)
    n = exact.details["channels"]
    over = explain.scorecam(spec, model, x, top_k=n + 5, batch_size=7)  # k >= channels, odd batches
    assert exact.method == over.method == "ScoreCAM" and not exact.approximate
    assert exact.details["forwards"] <= n
    np.testing.assert_allclose(exact.input_map, ref.input_map, atol=2e-4)
    np.testing.assert_allclose(over.input_map, ref.input_map, atol=2e-4)


def test_topk_scorecam_equals_unbatched_reference(tiny):
    """Top-k ScoreCAM against a one-channel-at-a-time reference written from the definition."""
    import cv2

    spec, model, xs = tiny["vit"]
    x = xs[3:4]
    k = 10
    heat = explain.scorecam(spec, model, x, top_k=k, batch_size=4)

    layer = spec.cam_target_layer(model)
    store = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    acts = spec.reshape_activations(store[0])[0].numpy().astype(np.float64)  # (C, h, w)
    top = np.argsort(-acts.mean(axis=(1, 2)))[:k]
    scores, maps = [], []
    for c in top:
        up = torch.nn.functional.interpolate(
            torch.from_numpy(acts[c][None, None]).float(), size=(S, S), mode="bilinear", align_corners=True
        )[0, 0]
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        with torch.no_grad():
            scores.append(float(model(x * mask)))
        maps.append(acts[c])
    w = np.exp(np.array(scores) - max(scores))
    w /= w.sum()
    cam = np.maximum((w[:, None, None] * np.array(maps)).sum(0), 0)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    ref = cv2.resize(cam.astype(np.float32), (S, S))
    ref = (ref - ref.min()) / (ref.max() - ref.min() + 1e-7)
    np.testing.assert_allclose(heat.input_map, ref, atol=1e-4)


def test_topk_agreement_report(tiny):
    spec, model, xs = tiny["vit"]
    n = 64  # test_vit's width
    rep = explain.scorecam_topk_agreement(spec, model, [xs[0:1], xs[1:2]], top_ks=(n, 8))
    assert rep["n_cases"] == 2 and rep["channels"] == n
    full, approx = rep["results"]
    assert full["top_k"] == n and full["pearson_min"] == pytest.approx(1.0) and full["top_iou_min"] == 1.0
    # The derived top-8 map is what scorecam(top_k=8) returns.
    direct = explain.scorecam(spec, model, xs[0:1], top_k=8).input_map
    derived_vs_full = approx["per_case"][0]
    exact = explain.scorecam(spec, model, xs[0:1], top_k=None).input_map
    assert explain.agreement(exact, direct)["pearson"] == pytest.approx(derived_vs_full["pearson"], abs=1e-4)


# ----------------------------------------------------------------------------- threads, hooks


def test_hook_records_only_its_own_thread(tiny):
    spec, model, xs = tiny["efficientnet_b3"]
    layer = spec.cam_target_layer(model)
    with explain._capture(layer) as captured:
        t = threading.Thread(target=lambda: model(xs[:1]))
        with torch.inference_mode():
            t.start()
            t.join()
            assert captured == []  # another thread's forward is not recorded
            model(xs[:1])
        assert len(captured) == 1
    assert _all_hooks_empty(model)


def test_threads_equal_serial_results(tiny):
    """4 sessions on the same model objects, plus unlocked predictions hammering them."""
    members = [tiny["efficientnet_b3"], tiny["vit"]]

    def work(spec, model, x):
        return (explain.gradcam(spec, model, x).input_map, explain.scorecam(spec, model, x, top_k=16, batch_size=8).input_map)

    serial = {(s.member_id, i): work(s, m, xs[i : i + 1]) for s, m, xs in members for i in range(4)}
    results: dict = {}
    errors: list = []
    stop = threading.Event()
    barrier = threading.Barrier(4)

    def session(i: int) -> None:
        try:
            barrier.wait()
            for s, m, xs in members:
                results[(s.member_id, i)] = work(s, m, xs[i : i + 1])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def rogue() -> None:  # forwards that ignore the lock (other data, same modules)
        noise = torch.randn(2, 3, S, S)
        with torch.inference_mode():
            while not stop.is_set():
                for _, m, _ in members:
                    m(noise)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    intruder = threading.Thread(target=rogue)
    intruder.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    intruder.join()
    assert not errors, errors
    for key, (g, s) in serial.items():
        np.testing.assert_allclose(results[key][0], g, atol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(results[key][1], s, atol=1e-5, err_msg=str(key))
    for _, m, _ in members:
        assert _all_hooks_empty(m)


def test_hooks_grads_and_lock_released(tiny, monkeypatch):
    for family in FAMILIES:
        spec, model, xs = tiny[family]
        explain.gradcam(spec, model, xs[:1])
        explain.scorecam(spec, model, xs[:1], top_k=4)
        assert _all_hooks_empty(model), family
        # GradCAM must not leave gradients on shared parameters (another request's state).
        assert all(p.grad is None for p in model.parameters()), family
    spec, model, xs = tiny["swin"]
    explain.naive_scorecam(spec, model, xs[:1])
    assert _all_hooks_empty(model)

    # A failure inside the hooked forward, after the CAM layer has run.
    spec, model, xs = tiny["vit"]

    def broken_head(*args, **kwargs):
        raise RuntimeError("head failed")

    monkeypatch.setattr(model.head, "forward", broken_head)
    for fn in (explain.gradcam, explain.scorecam):
        with pytest.raises(RuntimeError, match="head failed"):
            fn(spec, model, xs[:1])
        assert _all_hooks_empty(model)
    monkeypatch.undo()
    acquired = []

    def other_session() -> None:
        lock = model_lock(model)  # the lock predictions take too
        ok = lock.acquire(timeout=2)
        acquired.append(ok)
        if ok:
            lock.release()

    t = threading.Thread(target=other_session)
    t.start()
    t.join()
    assert acquired == [True]  # the failed CAM did not keep the model locked


# ----------------------------------------------------------------------------- localisation


def _blob_images(n: int, positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise; positives get a bright Gaussian blob somewhere in the top-right quadrant."""
    yy, xx = np.mgrid[0:S, 0:S]
    imgs = rng.normal(0.3, 0.08, (n, S, S))
    cy = rng.uniform(6, 26, n)
    cx = rng.uniform(38, 58, n)
    blob = 0.6 * np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 32.0)
    return (imgs + blob * positive[:, None, None]).clip(0, 1).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_cam_grid_orientation_matches_the_image(family):
    """Brightening the input's top-right corner changes the CAM layer's top-right cell most.

    Covers the (B, C, H, W), token and (B, H, W, C) reshapes: a transposed or flipped grid
    would move the change to another corner. Untrained nets: the residual path keeps it local.
    """
    torch.manual_seed(0)
    spec = family_spec(family, variant="tiny", input_size=S)
    model = spec.build_model().eval()
    x = torch.randn(1, 3, S, S)
    x2 = x.clone()
    x2[..., 0:16, 48:64] += 3.0
    layer = spec.cam_target_layer(model)
    with explain._capture(layer) as captured, torch.inference_mode():
        model(x)
        model(x2)
    a1, a2 = (spec.reshape_activations(t) for t in captured)
    change = (a2 - a1).abs().sum(dim=1)[0]
    gh, gw = change.shape
    r, c = np.unravel_index(int(change.argmax()), (gh, gw))
    assert (r + 0.5) * S / gh < S / 2 and (c + 0.5) * S / gw >= S / 2, (family, r, c)


def test_gradcam_finds_the_signal_quadrant():
    """A tiny EfficientNet trained for a few seconds to detect a blob in the top-right quadrant.

    The CAM layer is ``blocks.3`` (4x4 grid at 64 px): the spec's ``bn2`` is a 2x2 grid whose
    cells all see the whole image, too coarse to resolve a quadrant. (Tiny ViT/Swin do not
    train reliably in a few seconds; their grid orientation is checked above.)
    """
    family, steps = "efficientnet_b3", 25
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = family_spec(family, variant="tiny", input_size=S).replace(cam_layer="blocks.3")
    model = spec.build_model()

    def tensors(imgs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([spec.normalise(im) for im in imgs]))

    labels = np.tile([0.0, 1.0], 96)
    x_train, y_train = tensors(_blob_images(len(labels), labels, rng)), torch.tensor(labels, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(labels), 32, replace=False))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x_train[idx]).reshape(-1), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)

    x_test = tensors(_blob_images(6, np.ones(6), np.random.default_rng(1)))
    x_neg = tensors(_blob_images(6, np.zeros(6), np.random.default_rng(2)))
    with torch.inference_mode():
        # The premise: the net has learned the blob (every positive above every negative).
        assert model(x_test).min() > model(x_neg).max()
    for i in range(len(x_test)):
        heat = explain.gradcam(spec, model, x_test[i : i + 1]).input_map
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        assert r < S // 2 and c >= S // 2, (i, r, c)
        quadrants = [heat[:32, :32].mean(), heat[:32, 32:].mean(), heat[32:, :32].mean(), heat[32:, 32:].mean()]
        assert int(np.argmax(quadrants)) == 1, (i, quadrants)


# ----------------------------------------------------------------------------- ensemble, agreement


def test_ensemble_heatmap_is_labelled_weighted_mean():
    rng = np.random.default_rng(0)
    maps = {
        "a": rng.random((30, 20)).astype(np.float32),
        "b": rng.random((30, 20)).astype(np.float32),
        "c": np.zeros((30, 20), np.float32),
    }
    ens = explain.ensemble_heatmap(maps, {"a": 1.0, "b": 3.0, "c": 0.0}, base_method="GradCAM")
    np.testing.assert_allclose(ens.values, 0.25 * maps["a"] + 0.75 * maps["b"], atol=1e-6)
    assert ens.method.startswith("Ensemble-weighted GradCAM") and "a 0.25" in ens.method
    assert dict(ens.weights) == {"a": 0.25, "b": 0.75, "c": 0.0}
    _check_map(ens.values, (30, 20))
    with pytest.raises(InputError, match="no weight for c"):
        explain.ensemble_heatmap(maps, {"a": 1.0, "b": 1.0})
    with pytest.raises(InputError, match="no heatmap for d"):
        explain.ensemble_heatmap(maps, {"a": 1, "b": 1, "c": 1, "d": 1})
    with pytest.raises(InputError):
        explain.ensemble_heatmap(maps, {"a": -1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(InputError, match="all weights are zero"):
        explain.ensemble_heatmap(maps, {"a": 0, "b": 0, "c": 0})
    with pytest.raises(InputError, match="different shapes"):
        explain.ensemble_heatmap({"a": maps["a"], "b": maps["b"][:10]}, {"a": 1, "b": 1})


def test_ensemble_label_from_member_heatmaps(tiny):
    heats = {f: explain.gradcam(spec, model, xs[:1]) for f, (spec, model, xs) in tiny.items()}
    ens = explain.ensemble_heatmap(heats, {f: 1.0 for f in heats})
    assert ens.method.startswith("Ensemble-weighted GradCAM (weights:")


def test_agreement_metrics():
    ramp = np.tile(np.arange(10, dtype=float), (10, 1))
    same = explain.agreement(ramp, ramp)
    assert same["pearson"] == pytest.approx(1.0) and same["top_iou"] == 1.0
    flipped = explain.agreement(ramp, ramp[:, ::-1])
    assert flipped["pearson"] == pytest.approx(-1.0) and flipped["top_iou"] == 0.0
    # Top 20 %: columns {8, 9} vs {7, 9} when column 7 is made the hottest: IoU 1/3.
    moved = ramp.copy()
    moved[:, 7] = 100.0
    assert explain.agreement(ramp, moved)["top_iou"] == pytest.approx(1 / 3)
    assert np.isnan(explain.agreement(np.ones((4, 4)), ramp[:4, :4])["pearson"])
    with pytest.raises(InputError):
        explain.agreement(ramp, ramp[:5])


# ----------------------------------------------------------------------------- cache, one case


def test_cam_cache_lru_and_single_flight():
    cache = explain.CamCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache

    calls = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "value"

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_or_compute("k", slow))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["value"] * 5 and len(calls) == 1

    def boom() -> None:
        raise RuntimeError("fail")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("bad", boom)
    assert "bad" not in cache
    assert cache.get_or_compute("bad", lambda: 7) == 7


def test_explain_member_end_to_end_with_cache(tiny):
    spec, model, _ = tiny["efficientnet_b3"]
    rng = np.random.default_rng(3)
    pixels = rng.random((150, 200)).astype(np.float32)
    cache = explain.CamCache(maxsize=8)
    first = explain.explain_member(spec, model, pixels, (50, 40, 110, 90), method="scorecam", top_k=8, cache=cache)
    _check_map(first.image_map, (150, 200))
    x0, y0, x1, y1 = (int(v) for v in first.crop_box)
    _check_map(first.roi_map, (y1 - y0, x1 - x0))
    # The crop is the ROI plus margin, square: it contains the ROI.
    assert x0 <= 50 and y0 <= 40 and x1 >= 110 and y1 >= 90
    again = explain.explain_member(spec, model, pixels, (50, 40, 110, 90), method="scorecam", top_k=8, cache=cache)
    assert again.heatmap is first.heatmap and cache.hits == 1
    other_k = explain.explain_member(spec, model, pixels, (50, 40, 110, 90), method="scorecam", top_k=4, cache=cache)
    assert other_k.heatmap is not first.heatmap
    changed = pixels.copy()
    changed[0, 0] += 0.5
    assert imaging.image_hash(changed) != imaging.image_hash(pixels)
    full = explain.explain_member(spec, model, pixels, None, method="gradcam")
    assert full.image_map.shape == (150, 200) and full.heatmap.method == "GradCAM"
    fx0, fy0, fx1, fy1 = full.crop_box
    assert 0 <= fx0 < fx1 <= 200 and 0 <= fy0 < fy1 <= 150
    assert full.roi_map.shape == (int(fy1 - fy0), int(fx1 - fx0))
    with pytest.raises(InputError):
        explain.explain_member(spec, model, pixels, (0, 0, 10, 10), method="lime")


def test_bench_cams_reports_medians_and_threads(tiny):
    from model_zoo.bench import bench_cams

    spec, model, xs = tiny["swin"]  # the cheapest tiny member: 32 channels
    out = bench_cams([(spec, model)], {spec.member_id: xs[:1]}, repeats=2, naive_repeats=1, top_k=8)
    for key in ("gradcam_s", "scorecam_s", "scorecam_naive_s"):
        assert out[key] > 0
    assert out["threads"] == torch.get_num_threads()
    assert out["scorecam_method"][spec.member_id].startswith("ScoreCAM (approx.: top-k=8")
    assert out["per_member"][spec.member_id]["scorecam_s"] == out["scorecam_s"]  # one member
    skipped = bench_cams([(spec, model)], {spec.member_id: xs[:1]}, repeats=1, naive_repeats=0, top_k=8, warmup=False)
    assert skipped["scorecam_naive_s"] is None and skipped["speedup_vs_naive"] is None
    with pytest.raises(InputError, match="no benchmark input"):
        bench_cams([(spec, model)], {}, repeats=1)
