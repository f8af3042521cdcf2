"""Which evaluation metrics the training curves draw, and on which panel: fractions
together, ranks apart, chosen hyper-parameters (``lp_weight_decay``) not at all."""

from __future__ import annotations

from mmcontrast.eval.plots import eval_panels, training_curves_figure

NAMES = [
    "image_retrieval_recall@1",
    "text_retrieval_recall@10",
    "image_retrieval_median_rank",
    "text_retrieval_mean_rank",
    "knn20_acc1",
    "lp_acc1",
    "lp_mean_per_class_recall",
    "lp_weight_decay",
    "emoji-category-zeroshot/acc5",
    "emoji-category-zeroshot/mean_per_class_recall",
    "accuracy",
    "top5",
    "val_loss",
]


def test_eval_panels_by_name() -> None:
    panels = eval_panels(NAMES)
    assert panels["fraction"] == [
        "image_retrieval_recall@1",
        "text_retrieval_recall@10",
        "knn20_acc1",
        "lp_acc1",
        "lp_mean_per_class_recall",
        "emoji-category-zeroshot/acc5",
        "emoji-category-zeroshot/mean_per_class_recall",
        "accuracy",
        "top5",
    ]
    assert panels["rank"] == ["image_retrieval_median_rank", "text_retrieval_mean_rank"]
    assert panels["other"] == ["val_loss"]


def test_curves_draw_ranks_apart_and_skip_hyperparameters() -> None:
    history = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 11)]
    # a median rank of 1.0 and a weight decay of 1e-4 lie in [0, 1] but are no fractions
    evals = [
        {
            "step": s,
            "epoch": s // 5,
            "image_retrieval_recall@1": 0.1 * s,
            "image_retrieval_median_rank": 1.0,
            "lp_acc1": 0.5,
            "lp_weight_decay": 1e-4,
        }
        for s in (5, 10)
    ]
    fig = training_curves_figure(history, evals)
    by_label = {ax.get_ylabel(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert by_label["eval (fraction)"] == ["image_retrieval_recall@1", "lp_acc1"]
    assert by_label["eval rank (lower: better)"] == ["image_retrieval_median_rank"]
    drawn = [label for labels in by_label.values() for label in labels]
    assert "lp_weight_decay" not in drawn and "epoch" not in drawn
    assert len(fig.axes) == 4  # loss, lr, fractions, ranks
