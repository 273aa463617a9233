"""The PyTorch peer of jaxdiff's seed MNIST nets, for side-by-side benchmarks only.

The unconditional net is the original tutorial's score U-Net; the conditional
one adds spatial transformers. Both mirror jaxdiff's `seed_unet` (transposed-
convolution decoder, `model.preconditioning="none"`) layer for layer, so that
`benchmarks/run.py` times the same work on both sides (it checks that the
parameter counts agree):

- Gaussian-Fourier time features (fixed W ~ N(0, 30^2), 256 dims) -> dense -> swish;
- encoder: 3x3 VALID convs without bias, 1->32 (stride 1), 32->64, 64->128,
  128->256 (stride 2); after each, a dense projection of the time embedding is
  added, then GroupNorm (4 groups at the first level, 32 elsewhere) and swish;
- decoder: 3x3 transposed convs mirroring it (output_padding where needed for
  5 -> 12 -> 26), each followed by the time dense, GroupNorm, swish, and the
  encoder activation of that size added; a last transposed conv (with bias) to 28x28;
- output divided by the VE SDE's marginal std (sigma = 25);
- conditional: a learned embedding of the label (11 classes with the null one)
  as `context_tokens` tokens of 256, and a spatial transformer (pre-LayerNorm
  self-attention, pre-LayerNorm cross-attention to the tokens, GELU
  feed-forward `ff_mult` wide, each with a residual) after the encoder levels
  of side 5 and 2 and the decoder level of side 5.

Training is the same step as jaxdiff's: DSM loss with lambda = std^2, AdamW,
global-norm clipping at 1, EMA of the parameters. Sampling is Euler-Maruyama.
PyTorch is an optional extra (`pip install -e ".[benchmarks]"`), never imported
by the package or the tests.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 -- PyTorch's own convention.
from torch import nn

SIGMA = 25.0


def marginal_std(t: torch.Tensor) -> torch.Tensor:
    """std(t) of the VE SDE dx = sigma^t dw started at t = 0."""
    return torch.sqrt((SIGMA ** (2 * t) - 1.0) / (2 * math.log(SIGMA)))


class GaussianFourierProjection(nn.Module):
    def __init__(self, embed_dim: int, scale: float = 30.0):
        super().__init__()
        w = np.random.default_rng(0).standard_normal(embed_dim // 2) * scale
        self.register_buffer("w", torch.tensor(w, dtype=torch.float32))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t[:, None] * self.w[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections (keys from `context_dim`)."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(context_dim, channels)
        self.value = nn.Linear(context_dim, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(y):
            return y.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v)  # Fused kernels where available.
        return self.out(out.transpose(1, 2).reshape(b, n, c))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, context_dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(channels) for _ in range(3))
        self.self_attention = Attention(channels, channels, heads)
        self.cross_attention = Attention(channels, context_dim, heads)
        self.ff_in = nn.Linear(channels, ff_mult * channels)
        self.ff_out = nn.Linear(ff_mult * channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        z = self.norm1(y)
        y = y + self.self_attention(z, z)
        y = y + self.cross_attention(self.norm2(y), context)
        y = y + self.ff_out(F.gelu(self.ff_in(self.norm3(y)), approximate="tanh"))
        return y.transpose(1, 2).reshape(b, c, h, w)


class SeedScoreNet(nn.Module):
    """The seed U-Net (NCHW), unconditional or (num_classes > 0) conditional."""

    def __init__(
        self,
        channels=(32, 64, 128, 256),
        embed_dim: int = 256,
        num_classes: int = 0,
        attention_sides=(5, 2),
        heads: int = 1,
        context_tokens: int = 4,
        context_dim: int = 256,
        ff_mult: int = 4,
    ):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.fourier = GaussianFourierProjection(embed_dim)
        self.embed = nn.Linear(embed_dim, embed_dim)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, c1, 3, stride=1, bias=False),
                nn.Conv2d(c1, c2, 3, stride=2, bias=False),
                nn.Conv2d(c2, c3, 3, stride=2, bias=False),
                nn.Conv2d(c3, c4, 3, stride=2, bias=False),
            ]
        )
        self.tconvs = nn.ModuleList(
            [
                nn.ConvTranspose2d(c4, c3, 3, stride=2, bias=False),  # 2 -> 5
                nn.ConvTranspose2d(c3, c2, 3, stride=2, output_padding=1, bias=False),  # -> 12
                nn.ConvTranspose2d(c2, c1, 3, stride=2, output_padding=1, bias=False),  # -> 26
            ]
        )
        self.final = nn.ConvTranspose2d(c1, 1, 3, stride=1)  # 26 -> 28
        widths = [c1, c2, c3, c4, c3, c2, c1]
        self.denses = nn.ModuleList([nn.Linear(embed_dim, c) for c in widths])
        self.norms = nn.ModuleList(
            [nn.GroupNorm(4 if i == 0 else min(32, c), c) for i, c in enumerate(widths)]
        )
        self.num_classes = num_classes
        self.attention_sides = attention_sides
        if num_classes:
            self.context_tokens, self.context_dim = context_tokens, context_dim
            self.class_embedding = nn.Embedding(num_classes + 1, context_tokens * context_dim)
            # Encoder sides 26, 12, 5, 2; decoder sides 5, 12, 26.
            sides = [(26, c1), (12, c2), (5, c3), (2, c4), (5, c3), (12, c2), (26, c1)]
            self.transformers = nn.ModuleDict(
                {
                    str(i): SpatialTransformer(c, context_dim, heads, ff_mult)
                    for i, (side, c) in enumerate(sides)
                    if side in attention_sides
                }
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        temb = F.silu(self.embed(self.fourier(t)))
        context = None
        if self.num_classes:
            context = self.class_embedding(labels).reshape(
                -1, self.context_tokens, self.context_dim
            )

        def level(i, h):
            h = h + self.denses[i](temb)[:, :, None, None]
            h = F.silu(self.norms[i](h))
            return h

        def attend(i, h):
            if context is not None and str(i) in self.transformers:
                return self.transformers[str(i)](h, context)
            return h

        skips = []
        h = x
        for i, conv in enumerate(self.convs):
            h = attend(i, level(i, conv(h)))
            skips.append(h)
        for j, tconv in enumerate(self.tconvs):
            i = 4 + j
            h = attend(i, level(i, tconv(h)) + skips[2 - j])
        h = self.final(h)
        return h / marginal_std(t)[:, None, None, None]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dsm_loss(model, x0, labels=None, eps: float = 1e-5) -> torch.Tensor:
    """E || std(t) s(x_t, t) + z ||^2, summed over pixels, averaged over the batch."""
    t = torch.rand(x0.shape[0], device=x0.device) * (1.0 - eps) + eps
    z = torch.randn_like(x0)
    std = marginal_std(t)[:, None, None, None]
    score = model(x0 + z * std, t, labels)
    return ((score.float() * std + z) ** 2).sum(dim=(1, 2, 3)).mean()


class Trainer:
    """AdamW + global-norm clipping + EMA, jaxdiff's `train_step` in PyTorch.

    Batches are drawn on the device from a device-resident dataset, as jaxdiff does.
    """

    def __init__(self, model, images, labels, batch, lr=2e-3, dtype=torch.float32, cond_drop=0.1):
        self.model, self.images, self.labels, self.batch = model, images, labels, batch
        self.dtype, self.cond_drop = dtype, cond_drop
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in model.parameters()]

    def step(self) -> torch.Tensor:
        device = self.images.device
        index = torch.randint(0, self.images.shape[0], (self.batch,), device=device)
        x0 = self.images[index]
        labels = None
        if self.model.num_classes:
            labels = self.labels[index]
            drop = torch.rand(self.batch, device=device) < self.cond_drop
            labels = torch.where(drop, torch.full_like(labels, self.model.num_classes), labels)
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = dsm_loss(self.model, x0, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, list(self.model.parameters()), 1.0 - 0.999)
        return loss


@torch.no_grad()
def euler_maruyama(model, num, steps, device, labels=None, dtype=torch.float32, eps=1e-3):
    """The seed's reverse-SDE sampler: `steps` network evaluations on a batch of `num`."""
    times = torch.linspace(1.0, eps, steps, device=device)
    dt = times[0] - times[1]
    x = torch.randn(num, 1, 28, 28, device=device) * marginal_std(times[:1])
    mean = x
    for t in times:  # No host sync inside: t stays a device scalar.
        g = SIGMA**t
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            score = model(x, t.expand(num), labels).float()
        mean = x + g**2 * score * dt
        x = mean + torch.sqrt(dt) * g * torch.randn_like(x)
    return mean
