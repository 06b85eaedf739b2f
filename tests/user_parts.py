"""User-side code for the Python API tests: a model class, a teacher class and a Dataset class of the kind
people bring, importable by path so a recipe (``external`` models, a registered dataset) can name them."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


SPLITS = {"train": slice(0, 1200), "val": slice(1200, 1500), "test": slice(1500, 1797)}


class DigitsItems(Dataset):
    """sklearn digits, one (x, label) item at a time, as a user's own map-style Dataset (no targets attribute)."""

    def __init__(self, split: str = "train") -> None:
        x, y = digits_arrays()
        self.x, self.y = x[SPLITS[split]], y[SPLITS[split]]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class TinyNet(nn.Module):
    """A student: 64 -> hidden -> 10."""

    def __init__(self, hidden: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class TeacherNet(TinyNet):
    """A wider teacher of the same form."""

    def __init__(self) -> None:
        super().__init__(hidden=128)


def trained_teacher(steps: int = 150) -> TeacherNet:
    """A teacher trained briefly on the digits train split (full batch Adam; ~89% on the test split)."""
    torch.manual_seed(0)
    teacher = TeacherNet()
    x, y = digits_arrays()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(x[SPLITS["train"]]), y[SPLITS["train"]]).backward()
        opt.step()
    return teacher.eval()


def user_digits_splits() -> dict[str, Dataset]:
    """What a registered dataset builder may return: a mapping of the user's own Datasets."""
    return {"train": DigitsItems("train"), "val": DigitsItems("val"), "test": DigitsItems("test")}


class PairItems(Dataset):
    """Two fields per sample: 'a' the 8x8 image as 64 values, 'b' the same image mirrored and offset (another
    'view' of the sample), plus the label: the teacher reads one field, the student the other."""

    def __init__(self, split: str = "train") -> None:
        x, y = digits_arrays()
        self.x, self.y = x[SPLITS[split]], y[SPLITS[split]]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        a = self.x[i]
        b = a.view(8, 8).flip(-1).reshape(64) + 1.0
        return {"a": a, "b": b, "target": int(self.y[i])}


class NotLogits(nn.Module):
    """A broken user model: returns a dict without logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.fc(x)}


class UserCNN(nn.Module):
    """A CNN named its own way (``stem``, ``down1``, ``down2``, head ``classifier``, no ``fc``) reading the 64
    digits pixels as an 8x8 image: what ``layers: auto`` must handle without being told its layer paths."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()

        def unit(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        self.stem = unit(1, width, 1)
        self.down1 = unit(width, 2 * width, 2)
        self.down2 = unit(2 * width, 4 * width, 2)
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down2(self.down1(self.stem(x.reshape(-1, 1, 8, 8))))  # (B, 4w, 2, 2)
        return self.classifier(x.mean(dim=(2, 3)))


class WideUserCNN(UserCNN):
    """The teacher of the same form, four times wider."""

    def __init__(self) -> None:
        super().__init__(width=32)


class NeedsCheckpointFile(nn.Module):
    """Research code whose constructor fails with something other than TypeError/ValueError."""

    def __init__(self) -> None:
        super().__init__()
        raise FileNotFoundError("pretrained/backbone.pth")


class TrainModeBug(TinyNet):
    """A user model whose forward works in eval mode and raises in train mode (a broken dropout branch): the
    build's eval-mode probe passes, only a training step finds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ValueError("train-mode branch expects a mask argument")
        return super().forward(x)


class FlakyItems(DigitsItems):
    """A user's Dataset with ``targets`` (labels need no pass over the items) whose item ``bad`` cannot be read;
    ``in_worker``: only inside a DataLoader worker process."""

    def __init__(self, split: str = "train", bad: int = 3, in_worker: bool = False) -> None:
        super().__init__(split)
        self.targets, self.bad, self.in_worker = self.y, bad, in_worker

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torch.utils.data import get_worker_info

        if i == self.bad and (not self.in_worker or get_worker_info() is not None):
            raise ValueError(f"corrupt record {i}")
        return super().__getitem__(i)
