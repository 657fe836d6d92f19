"""Stand-ins for NVlabs/edm2's pickled classes (Precond, StabilityVAEEncoder): the attributes the converter reads."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class TinyUNet(nn.Module):
    """F(x, noise_labels, class_labels): a conv modulated by the noise level and the one-hot label."""

    def __init__(self, channels: int, labels: int):
        super().__init__()
        self.conv, self.emb = nn.Conv2d(channels, channels, 3, padding=1), nn.Linear(1, channels)
        self.label = nn.Linear(labels, channels) if labels else None

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        emb = self.emb(noise_labels[:, None])
        if self.label is not None:
            emb = emb + self.label(class_labels)
        return self.conv(x) * (1 + emb[:, :, None, None])


class Precond(nn.Module):
    """EDM2's Precond interface: EDM preconditioning around `unet`, zero labels when class_labels is None."""

    def __init__(self, labels: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.unet, self.label_dim = TinyUNet(4, labels), labels
        self.img_channels, self.img_resolution, self.sigma_data = 4, 8, 0.5

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = sigma.reshape(-1, 1, 1, 1)
        if self.label_dim and class_labels is None:
            class_labels = torch.zeros(len(x), self.label_dim)
        total = sigma**2 + self.sigma_data**2
        f_x = self.unet(x / total.sqrt(), sigma.flatten().log() / 4, class_labels)
        return self.sigma_data**2 / total * x + sigma * self.sigma_data / total.sqrt() * f_x


class StabilityVAEEncoder:
    """EDM2's latent standardisation: final = raw * scale + bias."""

    def __init__(self, vae_name: str = "stabilityai/sd-vae-ft-mse"):
        self.vae_name = vae_name
        self.scale = np.float32(0.5) / np.array([4.17, 4.62, 3.71, 3.28], dtype=np.float32)
        self.bias = -np.array([5.81, 3.25, 0.12, -2.15], dtype=np.float32) * self.scale
