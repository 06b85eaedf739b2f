"""torchdistill's side of the peer benchmark (run by benchmarks/peer.py inside a venv holding torchdistill).

The steps of torchdistill's own example script (examples/torchvision/image_classification.py, v1.1.x): load the
YAML config, seed, build teacher and student from its model registry, train through its DistillationBox with a
validation pass after every epoch and a checkpoint of the best student, then load that checkpoint and test the
teacher and the student. The loop body is the example's (its MetricLogger included). Prints one JSON line:
seconds per training epoch (validation excluded, as in our logs) and test accuracies.

    python benchmarks/peer_torchdistill.py --config benchmarks/peer-torchdistill.yaml --out DIR [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the config's !import_call names benchmarks.peer_models

import torch  # noqa: E402
from benchmarks.peer_models import TinyCNN, ccexam_teacher  # noqa: E402
from torchdistill.common import yaml_util  # noqa: E402
from torchdistill.common.main_util import load_ckpt, save_ckpt, set_seed  # noqa: E402
from torchdistill.core.distillation import get_distillation_box  # noqa: E402
from torchdistill.datasets.util import build_data_loader  # noqa: E402
from torchdistill.misc.log import MetricLogger, SmoothedValue  # noqa: E402
from torchdistill.models.registry import get_model, register_model  # noqa: E402

register_model(TinyCNN)
register_model(ccexam_teacher)


def train_one_epoch(box, device: torch.device, epoch: int, log_freq: int) -> None:
    """The example script's loop body."""
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
    for sample_batch, targets, supp_dict in metric_logger.log_every(box.train_data_loader, log_freq,
                                                                    f"Epoch: [{epoch}]"):
        start_time = time.time()
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
        metric_logger.meters["img/s"].update(sample_batch.shape[0] / (time.time() - start_time))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy in percent, as the example's ``evaluate`` computes it."""
    model.eval()
    correct = total = 0
    for image, target in loader:
        output = model(image.to(device))
        correct += int((output.argmax(1) == target.to(device)).sum())
        total += target.shape[0]
    return 100.0 * correct / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, help="override train.num_epochs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_seed(args.seed)
    device = torch.device("cpu")
    config = yaml_util.load_yaml_file(args.config)
    if args.epochs:
        config["train"]["num_epochs"] = args.epochs
    models = config["models"]
    teacher = get_model(models["teacher_model"]["key"], None, **models["teacher_model"]["kwargs"]).to(device)
    student = get_model(models["student_model"]["key"], None, **models["student_model"]["kwargs"]).to(device)
    ckpt = str(Path(args.out) / models["student_model"]["dst_ckpt"])
    box = get_distillation_box(teacher, student, config["datasets"], config["train"], device, None, False, 1)
    best, epoch_seconds = 0.0, []
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        t0 = time.perf_counter()
        train_one_epoch(box, device, epoch, config["train"]["log_freq"])
        epoch_seconds.append(time.perf_counter() - t0)
        val = evaluate(box.student_model, box.val_data_loader, device)
        if val > best:
            best = val
            save_ckpt(box.student_model, box.optimizer, box.lr_scheduler, best, args, ckpt)
        box.post_epoch_process()
    box.clean_modules()
    load_ckpt(ckpt, model=student, strict=True)
    test_cfg = config["test"]["test_data_loader"]
    loader = build_data_loader(config["datasets"][test_cfg["dataset_id"]], test_cfg, False)
    result = {"epoch_seconds": epoch_seconds, "teacher_test": evaluate(teacher, loader, device),
              "student_test": evaluate(student, loader, device), "student_best_val": best}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
