"""Masked frequency modelling (MFM): a low-pass or a high-pass band of each sample's spectrum over the domain's grid
(1D signals, 2D tiles, 3D volumes) is hidden, the encoder sees the image without it, and the spectrum of the
predicted image is scored on the hidden band."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def radius(shape: Sequence[int], device=None) -> torch.Tensor:
    """The normalised frequency radius of every FFT bin of a grid ``shape`` -> [*shape] in [0, 1]: the root mean
    square over the axes of |frequency| / Nyquist (0 = the mean, 1 = Nyquist on every axis)."""
    axes = torch.meshgrid(*[torch.fft.fftfreq(n, device=device).abs() * 2 for n in shape], indexing="ij")
    return torch.sqrt(sum(a ** 2 for a in axes) / len(shape))


class FrequencyMasking:
    """Per sample, a radius drawn from ``[low, high)`` and a coin: hide the bins inside it (the model restores the
    low frequencies) or outside it (the high ones)."""

    def __init__(self, low: float = 0.1, high: float = 0.5):
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"the hidden band's radius range must satisfy 0 <= low < high <= 1, got [{low}, {high})")
        self.low, self.high = low, high

    def hidden(self, batch: int, shape: Sequence[int], generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
        """Which FFT bins each sample hides: [B, *shape] bool."""
        r0 = self.low + (self.high - self.low) * torch.rand(batch, generator=generator)  # [B]
        low_band = torch.rand(batch, generator=generator) < 0.5  # [B]
        r = radius(shape)[None]  # [1, *shape]
        view = (batch,) + (1,) * len(shape)
        inside = r < r0.view(view)
        return torch.where(low_band.view(view), inside, ~inside).to(device)

    @staticmethod
    def corrupt(image: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``image`` [B, ..., *S] without the hidden bins ``hidden`` [B, *S] of its spectrum over the grid axes S."""
        dims = tuple(range(image.ndim - (hidden.ndim - 1), image.ndim))
        spec = torch.fft.fftn(image, dim=dims)
        keep = ~hidden.view(hidden.shape[0], *[1] * (image.ndim - hidden.ndim), *hidden.shape[1:])
        return torch.fft.ifftn(spec * keep, dim=dims).real

    @staticmethod
    def loss(pred: torch.Tensor, image: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The hidden band's error per grid point: for each channel, sum over the hidden bins of |FFT(pred) -
        FFT(image)|^2 over (grid points)^2 (by Parseval, the mean squared error of the hidden band's component), averaged
        over the channels with ``weight`` [B, ...] (the channel axes of ``image`` [B, ..., *S]: 0 for an absent group
        or an unused channel)."""
        dims = tuple(range(image.ndim - (hidden.ndim - 1), image.ndim))
        n = hidden[0].numel()
        diff = torch.fft.fftn(pred - image, dim=dims).abs() ** 2  # [B, ..., *S]
        mask = hidden.view(hidden.shape[0], *[1] * (image.ndim - hidden.ndim), *hidden.shape[1:])
        per_channel = (diff * mask).sum(dims) / n ** 2  # [B, ...]
        return (per_channel * weight).sum() / weight.sum().clamp_min(1)
