"""A team's own training script: plain PyTorch and MLflow, no `uib` anywhere.

It reads an ImageFolder tree (`DATA/train/<class>/*.png`, `DATA/test/<class>/*.png`) with
Pillow, trains a ResNet-18 (torchvision's layout: 7×7 stem, max-pool, four stages of two basic
blocks) for a few epochs, and logs it with `mlflow.pytorch.log_model` in MLflow's default
format, registered under `--registered-model-name`. This is the model `uib adopt` takes over:

    python docs/examples/train_resnet18.py --data colour-mnist --registered-model-name team-resnet

The tracking store is MLFLOW_TRACKING_URI, as for any MLflow script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, 3, H, W) in [0, 1] and labels, classes in sorted folder order (ImageFolder)."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
                labels.append(label)
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.array(labels), classes


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            cout = width * 2**i
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ImageFolder root")
    parser.add_argument("--registered-model-name", default="team-resnet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_train, y_train, classes = read_split(args.data, "train")
    x_test, y_test, _ = read_split(args.data, "test")
    model = ResNet18(len(classes), args.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    with mlflow.start_run(run_name="team-resnet18"):
        mlflow.log_params(vars(args) | {"data": str(args.data), "classes": ",".join(classes)})
        for epoch in range(args.epochs):
            model.train()
            for idx in torch.randperm(len(y)).split(args.batch_size):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
            mlflow.log_metric("train_loss", loss.item(), step=epoch)
        model.eval()
        with torch.no_grad():
            accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        mlflow.log_metric("test_accuracy", float(accuracy))
        mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=x_train[:4],
            registered_model_name=args.registered_model_name,
        )
    print(f"test accuracy {accuracy:.4f}; registered as {args.registered_model_name}")


if __name__ == "__main__":
    main()
