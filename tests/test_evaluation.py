"""The protocol's rules on hand-made maps, and the fast evaluator against the per-tau oracle."""

import numpy as np
import pytest

from keras_wsol import contours, protocol_reference
from keras_wsol import evaluation as E


def ring(size=32):
    m = np.zeros((size, size), np.float32)
    m[8:24, 8:24] = 1.0
    m[12:20, 12:20] = 0.0
    return m


def test_ring_yields_hole_box_in_multi_contour_mode():
    boxes = contours.boxes_at_threshold(ring(), 0.5, multi_contour=True).tolist()
    assert [8, 8, 24, 24] in boxes  # outer box, one pixel wider than the last pixel
    # The hole's contour runs on the foreground pixels around it (11..20).
    assert sorted(boxes) == [[8, 8, 24, 24], [11, 11, 21, 21]]
    assert contours.boxes_at_threshold(ring(), 0.5).tolist() == [[8, 8, 24, 24]]
    assert protocol_reference.boxes_at_tau(ring(), 0.5, True) == boxes


def test_single_contour_takes_largest_area_first_on_ties_and_single_pixel_has_zero_area():
    m = np.zeros((20, 20), np.float32)
    m[2, 2] = 1.0  # single pixel, area 0
    m[10:13, 3:6] = 1.0  # 3x3: polygon area 4
    m[10:13, 13:16] = 1.0  # same area
    expected = protocol_reference.boxes_at_tau(m, 0.5, False)
    assert contours.boxes_at_threshold(m, 0.5).tolist() == expected
    assert expected[0][1] == 10  # one of the squares, never the single pixel
    only_pixels = np.zeros((20, 20), np.float32)
    only_pixels[3, 3] = only_pixels[9, 9] = 1.0
    assert contours.boxes_at_threshold(only_pixels, 0.5).tolist() == protocol_reference.boxes_at_tau(
        only_pixels, 0.5, False
    )


def test_tau_zero_keeps_every_positive_pixel_and_strict_threshold():
    m = np.zeros((16, 16), np.float32)
    m[4:8, 4:8] = 1 / 255 + 1e-6  # u = 1 > T = 0
    m[10, 10] = 1.0
    assert contours.boxes_at_threshold(m, 0.0, multi_contour=True).tolist() == protocol_reference.boxes_at_tau(
        m, 0.0, True
    )
    assert len(contours.boxes_at_threshold(m, 0.0, multi_contour=True)) == 2
    # u == T is background: tau * 255 = 1 with u = 1 keeps only the peak.
    assert contours.boxes_at_threshold(m, 1 / 255 + 1e-9, multi_contour=True).tolist() == [[10, 10, 11, 11]]


def test_no_contour_gives_zero_box_and_constant_map_normalizes_to_zero():
    zero = np.zeros((8, 8), np.float32)
    assert contours.boxes_at_threshold(zero, 0.3).tolist() == [[0, 0, 0, 0]]
    assert not E.normalize_scoremap(np.full((4, 4), 3.0)).any()
    nan = np.ones((4, 4))
    nan[0, 0] = np.nan
    assert not E.normalize_scoremap(nan).any()
    np.testing.assert_allclose(E.normalize_scoremap(np.array([[2.0, 4.0, 3.0]])), [[0.0, 1.0, 0.5]])


def test_gt_box_truncation_and_degenerate_iou():
    assert E.resize_box((99, 49, 199, 99), (200, 100), 224) == (110, 109, 222, 221)
    assert E.resize_box((0.9, 0, 1.99, 1), (224, 224), 224) == (0, 0, 1, 1)
    iou = contours.box_iou(np.array([[0, 0, 0, 0], [5, 5, 4, 4]]), np.array([[0, 0, 0, 0], [10, 10, 9, 9]]))
    assert iou[0, 0] == 1.0 and iou[1, 1] == 0.0 and iou[0, 1] == 0.0
    assert contours.box_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 0, 14, 9]]))[0, 0] == pytest.approx(50 / 150)


def test_pxap_perfect_and_constant_maps():
    gt = np.zeros((1, 16, 16), bool)
    gt[0, 2:6, 3:9] = True
    perfect = E.MaskEvaluator(E.Protocol(0.01, 16))
    perfect.update(gt.astype(np.float32), gt)
    assert perfect.result()["PxAP"] == pytest.approx(100.0)
    assert perfect.result()["pIoU"] == pytest.approx(100.0)
    constant = E.MaskEvaluator(E.Protocol(0.01, 16))
    constant.update(np.full((1, 16, 16), 0.3, np.float32), gt)
    p, n = gt.sum(), (~gt).sum()
    assert constant.result()["PxAP"] == pytest.approx(100 * p / (p + n))
    ignored = E.MaskEvaluator(E.Protocol(0.01, 16))
    ignore = ~gt  # everything else ignored: a constant map becomes perfect
    ignored.update(np.full((1, 16, 16), 0.3, np.float32), gt, ignore)
    assert ignored.result()["PxAP"] == pytest.approx(100.0)
    empty = E.MaskEvaluator(E.Protocol(0.01, 16))
    empty.update(np.zeros((1, 16, 16), np.float32), np.zeros((1, 16, 16), bool))
    with pytest.raises(ValueError, match="No positive ground-truth"):
        empty.result()


def random_maps(rng, count, size):
    maps = []
    for i in range(count):
        k = int(rng.integers(3, 12))
        raw = rng.random((k, k)).astype(np.float32) ** int(rng.integers(1, 4))
        if i % 5 == 0:
            raw = rng.random((size, size)).astype(np.float32)  # many small contours
        maps.append(E.resize_scoremap(raw, size))
    return maps


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_fast_counts_equal_per_tau_reference(interval):
    rng = np.random.default_rng(7)
    size = 64
    maps = random_maps(rng, 10, size)
    gts = []
    for _ in maps:
        x0, y0 = rng.integers(0, 40, 2)
        gts.append(np.array([[x0, y0, x0 + rng.integers(3, 24), y0 + rng.integers(3, 24)], [0, 0, 20, 20]]))
    reference = protocol_reference.box_counts(maps, gts, interval)
    ev = E.BoxEvaluator(E.Protocol(interval, size))
    ev.update(np.stack(maps), gts)
    for mode in reference:
        for t in reference[mode]:
            np.testing.assert_array_equal(ev.correct[mode][t][: len(ev.taus)], reference[mode][t])


def test_classification_metrics_and_fixed_threshold():
    m = np.zeros((2, 8, 8), np.float32)
    m[:, 1:4, 1:4] = 1.0
    gt = [np.array([[1, 1, 4, 4]])] * 2
    ev = E.BoxEvaluator(E.Protocol(resize_length=8, fixed_threshold=0.5))
    ev.update(m, gt, labels=[0, 1], logits=np.array([[3.0, 1.0], [3.0, 1.0]]))
    r = ev.result()
    assert r["Top-1 Cls"] == 50.0 and r["Top-5 Cls"] == 100.0
    assert r["Top-1 Loc"] == 50.0 and r["GT-known Loc"] == 100.0
    assert r["GT-known Loc@0.5"] == 100.0 and r["Top-1 Loc@0.5"] == 50.0


def test_scoremap_validation_names_the_map():
    ev = E.BoxEvaluator(E.Protocol(resize_length=8))
    with pytest.raises(ValueError, match="score map 0"):
        ev.update(np.full((1, 8, 8), 2.0, np.float32), [np.array([[0, 0, 1, 1]])])
    with pytest.raises(ValueError, match="8x8"):
        ev.update(np.zeros((1, 4, 4), np.float32), [np.array([[0, 0, 1, 1]])])


def test_overlays_carry_a_legend_of_the_box_colours_and_the_threshold(monkeypatch, tmp_path):
    from keras_wsol import visualize

    figures = []
    monkeypatch.setattr(visualize.plt, "close", figures.append)
    images, maps = np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 32), np.float32)
    boxes = [np.array([[1, 1, 9, 9]])] * 2
    visualize.plot_overlays(images, maps, boxes, boxes, ["a", "b"], str(tmp_path / "o.png"), 0.23, "on val")
    visualize.plot_overlays(images[:1], maps[:1], boxes[:1], [np.zeros((0, 4))], ["c"], str(tmp_path / "p.png"), 0.2)
    legends = [[t.get_text() for t in figure.legends[0].get_texts()] for figure in figures]
    assert legends == [["predicted box (tau = 0.23, on val)", "ground truth"], ["predicted box (tau = 0.20)"]]
    assert (tmp_path / "o.png").is_file() and (tmp_path / "p.png").is_file()
