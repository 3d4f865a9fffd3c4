"""Classification heads over pooled ``(B, D)`` features.

Every head has a ``loss_kind`` the training loop reads to pick its loss:
``"ce"`` (cross-entropy, optionally weighted/label-smoothed) or ``"hinge"``
(``nn.MultiMarginLoss``: the multi-class hinge loss of a linear SVM).
"""

from __future__ import annotations

import torch
from torch import nn

from fashionops.errors import FashionOpsError


class LinearHead(nn.Module):
    """Dropout then one linear layer."""

    loss_kind = "ce"

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class MLPHead(nn.Module):
    """``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, classes)`` (dropout also on the input)."""

    loss_kind = "ce"

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SVMHead(LinearHead):
    """Linear SVM head: the linear layer trained with the multi-class hinge loss (``loss_kind="hinge"``).

    Outputs are class scores (margins), not calibrated logits; softmax of them is still a usable
    ranking for top-k. Weight decay in the optimiser plays the role of the SVM's L2 penalty.
    """

    loss_kind = "hinge"


def build_head(kind: str, in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Module:
    """Head for ``train.head`` (``linear | mlp | svm``)."""
    if kind == "linear":
        return LinearHead(in_features, num_classes, dropout)
    if kind == "mlp":
        return MLPHead(in_features, num_classes, hidden, dropout)
    if kind == "svm":
        return SVMHead(in_features, num_classes, dropout)
    raise FashionOpsError(f"train.head: unknown head {kind!r}; use linear, mlp or svm")
