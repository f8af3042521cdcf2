"""Tests for mmcontrast.eval.zero_shot, .templates and the confusion / curve PNGs of .plots."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

from mmcontrast.eval.classification import (
    classification_metrics,
    confusion_matrix,
    true_class_ranks,
)
from mmcontrast.eval.plots import save_confusion_matrix, save_training_curves
from mmcontrast.eval.templates import TEMPLATE_SETS, resolve_templates
from mmcontrast.eval.zero_shot import (
    build_zero_shot_classifier,
    zero_shot_evaluate,
    zero_shot_logits,
    zero_shot_metrics,
)

# Eight samples, six classes; class 5 never occurs as a label.
LOGITS = torch.tensor(
    [
        [9.0, 1, 2, 3, 4, 5],  # label 0: top                          -> rank 0
        [1.0, 9, 2, 3, 4, 5],  # label 0: lowest of all                -> rank 5
        [0.0, 8, 9, 1, 2, 3],  # label 1: class 2 above                -> rank 1
        [0.0, 7, 1, 2, 3, 4],  # label 1: top                          -> rank 0
        [5.0, 4, 3, 2, 1, 0],  # label 2: classes 0, 1 above           -> rank 2
        [1.0, 2, 3, 4, 5, 6],  # label 3: classes 4, 5 above           -> rank 2
        [9.0, 8, 7, 6, 5, 4],  # label 3: classes 0, 1, 2 above        -> rank 3
        [0.0, 0, 0, 0, 0, 0],  # label 4: all tied, loses the ties     -> rank 5
    ]
)
LABELS = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])


def test_zero_shot_metrics_by_hand() -> None:
    metrics = zero_shot_metrics(LOGITS, LABELS, ks=(1, 2, 5))
    assert list(metrics) == ["acc1", "acc2", "acc5", "mean_per_class_recall"]
    assert metrics["acc1"] == 2 / 8  # ranks 0, 0
    assert metrics["acc2"] == 3 / 8  # ranks 0, 1, 0
    assert metrics["acc5"] == 6 / 8  # all but the two rank-5 samples
    # Recall per present class: 0 -> 1/2, 1 -> 1/2, 2 -> 0/1, 3 -> 0/2, 4 -> 0/1 (tie lost).
    assert metrics["mean_per_class_recall"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0) / 5, abs=0)
    assert zero_shot_metrics(LOGITS, LABELS) == {
        "acc1": 0.25,
        "acc5": 0.75,
        "mean_per_class_recall": metrics["mean_per_class_recall"],
    }
    assert metrics == classification_metrics(LOGITS, LABELS, ks=(1, 2, 5))


def test_zero_shot_metrics_few_classes_report_nan_acc5() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    metrics = zero_shot_metrics(logits, torch.tensor([0, 1, 1]))
    assert list(metrics) == ["acc1", "acc5", "mean_per_class_recall"]
    assert metrics["acc1"] == 2 / 3
    assert math.isnan(metrics["acc5"])  # C = 3 < 5, as CLIP_benchmark
    assert metrics["mean_per_class_recall"] == (1 / 1 + 1 / 2) / 2


def test_zero_shot_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lie in"):
        zero_shot_metrics(LOGITS, torch.tensor([0, 0, 1, 1, 2, 3, 3, 6]))
    with pytest.raises(ValueError, match="ks"):
        zero_shot_metrics(LOGITS, LABELS, ks=())
    with pytest.raises(ValueError, match="N, C >= 1"):
        zero_shot_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        zero_shot_metrics(torch.full((2, 3), math.nan), torch.tensor([0, 1]))


def _reference_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]):
    """CLIP_benchmark's definitions by loops: top-k membership and recall of argmax."""
    n, c = logits.shape
    rows = logits.tolist()
    out = {}
    for k in ks:
        hits = 0
        for row, y in zip(rows, labels.tolist(), strict=True):
            order = sorted(range(c), key=lambda j, row=row: -row[j])
            hits += y in order[:k]
        out[f"acc{k}"] = hits / n if k <= c else math.nan
    pred = [max(range(c), key=lambda j, row=row: row[j]) for row in rows]
    recalls = []
    for cls in sorted(set(labels.tolist())):
        idx = [i for i, y in enumerate(labels.tolist()) if y == cls]
        recalls.append(sum(pred[i] == cls for i in idx) / len(idx))
    out["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return out, pred


def test_zero_shot_metrics_match_loop_reference_without_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=gen)
    labels = torch.randint(0, 6, (300,), generator=gen)  # class 6 only ever predicted
    expected, _ = _reference_metrics(logits, labels, (1, 3, 5, 8))
    got = zero_shot_metrics(logits, labels, ks=(1, 3, 5, 8))
    assert math.isnan(got.pop("acc8")) and math.isnan(expected.pop("acc8"))
    assert got == pytest.approx(expected, abs=1e-12)


def test_mean_per_class_recall_matches_sklearn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 10, generator=gen)
    labels = torch.randint(0, 9, (500,), generator=gen)
    expected = sklearn_metrics.balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert zero_shot_metrics(logits, labels)["mean_per_class_recall"] == pytest.approx(expected)
    hand = sklearn_metrics.balanced_accuracy_score(LABELS.numpy(), LOGITS.argmax(1).numpy())
    assert hand == pytest.approx(zero_shot_metrics(LOGITS, LABELS)["mean_per_class_recall"])


def test_chunked_metrics_and_logits_equal_unchunked() -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(103, 16, generator=gen)
    classes = torch.randn(9, 16, generator=gen)
    labels = torch.randint(0, 9, (103,), generator=gen)
    full = zero_shot_logits(images, classes)
    expected = 100.0 * (F.normalize(images, dim=-1) @ F.normalize(classes, dim=-1).T)
    torch.testing.assert_close(full, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert full.dtype == torch.float32 and full.shape == (103, 9)
    for max_elements in (1, 9, 50, 10**6):
        chunked = zero_shot_logits(images, classes, max_matrix_elements=max_elements)
        torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5 * full.abs().max().item())
        metrics = zero_shot_metrics(full, labels, max_matrix_elements=max_elements)
        assert metrics == zero_shot_metrics(full, labels)
        evaluated, pred = zero_shot_evaluate(
            images, labels, classes, max_matrix_elements=max_elements
        )
        assert evaluated == pytest.approx(metrics, abs=1e-12)
        assert torch.equal(pred, full.argmax(1))
    assert zero_shot_logits(images.double(), classes).dtype == torch.float64
    assert zero_shot_logits(images[:0], classes).shape == (0, 9)
    torch.testing.assert_close(
        zero_shot_logits(images, classes, scale=1.0), full / 100, rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="dims differ"):
        zero_shot_logits(images, classes[:, :8])
    with pytest.raises(ValueError, match="at least one image"):
        zero_shot_evaluate(images[:0], labels[:0], classes)


def test_a_class_name_listed_twice_gives_its_images_to_the_first_copy() -> None:
    """ImageNet's usual class list names 'missile' and 'sunglasses' twice: identical
    classifier rows, which a matrix product may still round apart by a few 1e-6. Both copies
    score as the first, which wins every image of either, as CLIP_benchmark's argmax on equal
    logits decides. Ties between different classes still count against the model."""
    gen = torch.Generator().manual_seed(3)
    classes = torch.randn(10, 512, generator=gen)
    classes[9] = classes[1]
    labels = torch.arange(10).repeat(20)
    images = classes[labels] + 0.3 * torch.randn(200, 512, generator=gen)
    metrics, pred = zero_shot_evaluate(images, labels, classes)
    assert not (pred == 9).any() and (pred[labels == 9] == 1).all()
    assert (pred[labels != 9] == labels[labels != 9]).all()  # easy images: only copies lost
    assert metrics["acc1"] == pytest.approx(180 / 200)
    assert metrics["mean_per_class_recall"] == pytest.approx(9 / 10)
    for chunk in (7, 10**6):  # chunking changes nothing
        again, _ = zero_shot_evaluate(images, labels, classes, max_matrix_elements=chunk * 10)
        assert again == metrics
    # distinct classes that tie (cosine 0 to both) still lose the tie
    tied, _ = zero_shot_evaluate(
        torch.eye(3)[:1].expand(4, 3), torch.tensor([0, 1, 0, 1]), torch.eye(3)[1:]
    )
    assert tied["acc1"] == 0.0


def test_copies_break_ties_by_index_under_either_rule() -> None:
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0]])  # classes 1 and 3 are copies; 2 is not
    same = torch.tensor([0, 1, 2, 1])
    for label, pessimistic, optimistic in ((1, 1, 0), (3, 2, 1), (2, 2, 0)):
        y = torch.tensor([label])
        assert true_class_ranks(scores, y, same_class=same).item() == pessimistic
        assert true_class_ranks(scores, y, "optimistic", same_class=same).item() == optimistic
    with pytest.raises(ValueError, match="same_class must have shape"):
        true_class_ranks(scores, torch.tensor([0]), "optimistic", same_class=same[:3])


def _vector(text: str, dim: int = 12) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed)) * 3.0


class FakeEncoder:
    """Maps each string to a fixed random vector (not unit-norm); records batch sizes."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.calls: list[int] = []
        self.dtype = dtype

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        return torch.stack([_vector(t) for t in texts]).to(self.dtype)


CLASSES = ["cat", "dog", "sea turtle", "red panda", "bus"]


def _brute_force_classifier(names: list[str], templates) -> torch.Tensor:
    weights = []
    for name in names:
        emb = torch.stack([F.normalize(_vector(t(name)), dim=0) for t in templates])
        mean = emb.mean(0)
        weights.append(mean / mean.norm())
    return torch.stack(weights)


def test_classifier_matches_brute_force_loop() -> None:
    templates = resolve_templates("simple")
    encoder = FakeEncoder()
    weights = build_zero_shot_classifier(encoder, CLASSES, "simple", batch_size=8)
    expected = _brute_force_classifier(CLASSES, templates)
    assert weights.shape == (5, 12) and weights.dtype == torch.float32
    assert weights.device.type == "cpu"
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(5), rtol=0, atol=1e-6)
    # 5 classes x 7 templates = 35 texts in batches of 8: texts of several classes per call.
    assert encoder.calls == [8, 8, 8, 8, 3]
    # One template: the class embedding is the normalised single text embedding.
    single = build_zero_shot_classifier(FakeEncoder(), CLASSES, "photo")
    expected_single = torch.stack(
        [F.normalize(_vector(f"a photo of a {c}."), dim=0) for c in CLASSES]
    )
    torch.testing.assert_close(single, expected_single, rtol=0, atol=1e-6)


def test_classifier_is_batch_size_invariant() -> None:
    reference = build_zero_shot_classifier(FakeEncoder(), CLASSES, "simple", batch_size=256)
    for batch_size in (1, 3, 7, 10, 34, 35):
        encoder = FakeEncoder()
        weights = build_zero_shot_classifier(encoder, CLASSES, "simple", batch_size=batch_size)
        assert torch.equal(weights, reference), batch_size
        assert sum(encoder.calls) == 35 and max(encoder.calls) <= batch_size
        assert len(encoder.calls) == math.ceil(35 / batch_size)
    half = build_zero_shot_classifier(FakeEncoder(torch.float16), CLASSES, "simple")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, rtol=0, atol=2e-3)


def test_classifier_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one class"):
        build_zero_shot_classifier(FakeEncoder(), [], "photo")
    with pytest.raises(ValueError, match="batch_size"):
        build_zero_shot_classifier(FakeEncoder(), CLASSES, "photo", batch_size=0)
    with pytest.raises(ValueError, match=r"\[2, D\]"):
        build_zero_shot_classifier(
            lambda texts: torch.zeros(3, 4), ["a", "b"], "name", batch_size=2
        )
    with pytest.raises(ValueError, match="NaN or Inf"):
        build_zero_shot_classifier(lambda t: torch.full((len(t), 2), math.nan), ["a"], "name")
    with pytest.raises(ValueError, match="unknown template set"):
        build_zero_shot_classifier(FakeEncoder(), CLASSES, "imagenet")


def test_template_sets() -> None:
    assert set(TEMPLATE_SETS) == {"openai_imagenet", "simple", "photo", "name"}
    openai = resolve_templates("openai_imagenet")
    assert len(openai) == 80
    assert [t("dog") for t in openai] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]
    assert openai[0]("dog") == "a bad photo of a dog."
    simple = resolve_templates("simple")
    assert [t("dog") for t in simple] == [t("dog") for t in SIMPLE_IMAGENET_TEMPLATES]
    assert len(simple) == 7
    assert [t("red panda") for t in resolve_templates("photo")] == ["a photo of a red panda."]
    assert [t("red panda") for t in resolve_templates("name")] == ["red panda"]


def test_resolve_templates_lists_and_strings() -> None:
    mixed = resolve_templates(
        ["a photo of a {c}.", "{} art", lambda c: f"a sketch of {c}", "{{{c}}}"]
    )
    assert [t("cat") for t in mixed] == ["a photo of a cat.", "cat art", "a sketch of cat", "{cat}"]
    assert [t("cat") for t in resolve_templates("itap of a {c}.")] == ["itap of a cat."]
    assert [t("cat") for t in resolve_templates(("{c}", "{c} and {c}"))] == ["cat", "cat and cat"]


def test_resolve_templates_errors() -> None:
    with pytest.raises(ValueError, match="openai_imagenet, simple, photo, name"):
        resolve_templates("imagenet")
    with pytest.raises(ValueError, match="no class-name placeholder"):
        resolve_templates(["a photo of a cat."])
    with pytest.raises(ValueError, match="pass the name itself"):
        resolve_templates(["photo"])
    with pytest.raises(ValueError, match="not a valid format string"):
        resolve_templates(["a {shape} of a {c}"])
    with pytest.raises(ValueError, match="non-empty"):
        resolve_templates([])
    with pytest.raises(ValueError, match="containing the class name"):
        resolve_templates([lambda c: "a photo"])
    with pytest.raises(ValueError, match="format string or a callable"):
        resolve_templates([3])  # type: ignore[list-item]


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = image.convert("L")
        low, high = pixels.getextrema()
        assert high - low > 100  # not a blank canvas
        return image.size


def test_save_confusion_matrix_small(tmp_path) -> None:
    pred = torch.tensor([0, 0, 1, 1, 2, 0, 3, 3, 3, 1])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    matrix = confusion_matrix(pred, labels, 5)  # class 4 has no samples
    names = ["cat", "dog", "a class name that is much too long to show", "bus", "empty"]
    out = save_confusion_matrix(tmp_path / "sub" / "cm.png", matrix, names)
    assert out == tmp_path / "sub" / "cm.png"
    width, height = _png(out)
    assert 400 < width < 1500 and 400 < height < 1500
    counts = save_confusion_matrix(tmp_path / "counts.png", matrix.float(), names, normalize=False)
    assert _png(counts)[0] > 400


def test_save_confusion_matrix_many_classes(tmp_path) -> None:
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 99, (3000,), generator=gen)
    noise = torch.randint(0, 99, (3000,), generator=gen)
    pred = torch.where(torch.rand(3000, generator=gen) < 0.7, labels, noise)
    matrix = confusion_matrix(pred, labels, 99)
    names = [f"class number {i} with a rather long descriptive name" for i in range(99)]
    width, height = _png(save_confusion_matrix(tmp_path / "cm99.png", matrix, names))
    assert width > 1500 and height > 1500  # about 0.16 inch per cell at 100 dpi
    # More classes than max_classes: the most-confused 40 are drawn.
    width40, _ = _png(save_confusion_matrix(tmp_path / "cm40.png", matrix, names, max_classes=40))
    assert 800 < width40 < width


def test_save_confusion_matrix_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="square"):
        save_confusion_matrix(tmp_path / "x.png", torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        save_confusion_matrix(tmp_path / "x.png", torch.zeros(2, 2), ["a"])
    with pytest.raises(ValueError, match="non-negative"):
        save_confusion_matrix(tmp_path / "x.png", -torch.ones(2, 2), ["a", "b"])


def test_save_training_curves(tmp_path) -> None:
    history = [
        {
            "step": s,
            "loss": 5.0 * math.exp(-s / 40) + 0.05,
            "lr": 1e-3 * min(1, s / 20),
            "pairs_per_s": 9.0,
        }
        for s in range(1, 201)
    ]
    history[10]["loss"] = math.nan  # a logging interval without a loss
    evals = [
        {
            "step": s,
            "acc1": 0.1 + s / 400,
            "acc5": math.nan,
            "image_retrieval_mean_rank": 50.0 - s / 5,
        }
        for s in (50, 100, 150, 200)
    ]
    out = save_training_curves(tmp_path / "curves" / "train.png", history, evals)
    width, height = _png(out)
    assert width > 800 and height > 900  # four panels
    loss_only = save_training_curves(
        tmp_path / "loss.png", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    )
    assert _png(loss_only)[1] < height


def test_save_training_curves_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="finite numeric 'loss'"):
        save_training_curves(tmp_path / "x.png", [{"step": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match="numeric 'step'"):
        save_training_curves(tmp_path / "x.png", [{"loss": 1.0}])
    with pytest.raises(ValueError, match=r"eval_history\[0\]"):
        save_training_curves(tmp_path / "x.png", [{"step": 1, "loss": 1.0}], [{"acc1": 0.5}])
