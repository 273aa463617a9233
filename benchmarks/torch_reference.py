"""PyTorch twins of jaxdiff's score networks, for side-by-side benchmarks only.

`SmallUNet` is the original tutorial's score U-Net (and, with classes, its
conditional version with spatial transformers): jaxdiff's `small_unet`
(transposed-convolution decoder). `UNet` is jaxdiff's residual U-Net (`unet`),
the network of the Fashion-MNIST and CIFAR-10 configs. Each mirrors its jaxdiff
net layer for layer, so that `benchmarks/run.py` times the same work on both
sides (it checks that the parameter counts agree).

`SmallUNet`:
- Gaussian-Fourier time features (fixed W ~ N(0, 30^2), 256 dims) -> dense -> swish;
- encoder: 3x3 VALID convs without bias, 1->32 (stride 1), 32->64, 64->128,
  128->256 (stride 2); after each, a dense projection of the time embedding is
  added, then GroupNorm (4 groups at the first level, 32 elsewhere) and swish;
- decoder: 3x3 transposed convs mirroring it (output_padding where needed for
  5 -> 12 -> 26), each followed by the time dense, GroupNorm, swish, and the
  encoder activation of that size added; a last transposed conv (with bias) to 28x28;
- conditional: a learned embedding of the label (11 classes with the null one)
  as `context_tokens` tokens of 256, and a spatial transformer (pre-LayerNorm
  self-attention, pre-LayerNorm cross-attention to the tokens, GELU
  feed-forward `ff_mult` wide, each with a residual) after the encoder levels
  of side 5 and 2 and the decoder level of side 5.

`UNet` (DDPM-style): a 3x3 conv in; per level `num_res_blocks` residual blocks
(GroupNorm-swish-conv, + time dense, GroupNorm-swish-dropout-conv, + skip, 1x1
where the width changes) with attention where the side is in
`attention_sides`, then a stride-2 3x3 conv (TensorFlow's SAME padding, as
XLA's); a res-attention-res middle; on the way up `num_res_blocks + 1` blocks,
each fed the concatenated skip, and nearest 2x upsampling + 3x3 conv between
levels; GroupNorm-swish-conv out. Attention is pre-GroupNorm self-attention
(unconditional) or the spatial transformer above (conditional).

Both turn their output into a score as jaxdiff's `model.preconditioning` says:
"none" divides it by the VE SDE's marginal std (sigma = 25), "edm" applies
Karras et al.'s input and output scalings (`to_score`).

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


PRECONDITIONINGS = ("none", "edm")


def to_score(network, x, t, preconditioning: str = "none", sigma_data: float = 0.5):
    """The score s(x, t) from `network(x_in)`, as jaxdiff's `make_score_fn` (VE SDE)."""
    std = marginal_std(t)[:, None, None, None]
    if preconditioning == "none":
        return network(x) / std
    total = std**2 + sigma_data**2
    out = network(x * torch.rsqrt(total))
    return sigma_data * torch.rsqrt(total) * out / std - x / total


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


class _ScoreNet(nn.Module):
    """What both twins share: the time embedding, the class tokens and the score."""

    def __init__(
        self,
        embed_dim: int = 256,
        fourier_scale: float = 30.0,
        num_classes: int = 0,
        context_tokens: int = 4,
        context_dim: int = 256,
        preconditioning: str = "none",
        sigma_data: float = 0.5,
    ):
        super().__init__()
        self.preconditioning, self.sigma_data = preconditioning, sigma_data
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.context_tokens, self.context_dim = context_tokens, context_dim
        self.fourier = GaussianFourierProjection(embed_dim, fourier_scale)
        self.embed = nn.Linear(embed_dim, embed_dim)
        if num_classes:
            self.class_embedding = nn.Embedding(num_classes + 1, context_tokens * context_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        return to_score(
            lambda h: self.network(h, t, labels), x, t, self.preconditioning, self.sigma_data
        )

    def embeddings(self, t: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The time embedding and (conditional nets) the condition tokens."""
        temb = F.silu(self.embed(self.fourier(t)))
        if not self.num_classes:
            return temb, None
        return temb, self.class_embedding(labels).reshape(-1, self.context_tokens, self.context_dim)


class SmallUNet(_ScoreNet):
    """The original tutorial's small U-Net (NCHW), unconditional or (num_classes > 0) conditional.

    `score_net`: `_ScoreNet`'s arguments (embedding, classes, preconditioning).
    """

    def __init__(
        self,
        channels=(32, 64, 128, 256),
        attention_sides=(5, 2),
        heads: int = 1,
        ff_mult: int = 4,
        **score_net,
    ):
        super().__init__(**score_net)
        embed_dim, num_classes, context_dim = self.embed_dim, self.num_classes, self.context_dim
        c1, c2, c3, c4 = channels
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
        self.attention_sides = attention_sides
        if num_classes:
            # Encoder sides 26, 12, 5, 2; decoder sides 5, 12, 26.
            sides = [(26, c1), (12, c2), (5, c3), (2, c4), (5, c3), (12, c2), (26, c1)]
            self.transformers = nn.ModuleDict(
                {
                    str(i): SpatialTransformer(c, context_dim, heads, ff_mult)
                    for i, (side, c) in enumerate(sides)
                    if side in attention_sides
                }
            )

    def network(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        temb, context = self.embeddings(t, labels)

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
        return self.final(h)


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups as jaxdiff picks them: max_groups where it divides, else the gcd."""
    return math.gcd(channels, max_groups)


class SameConv(nn.Conv2d):
    """A stride-2 3x3 conv of a `side` x `side` map with TensorFlow's (XLA's) SAME
    padding: on an even side, one row and column of zeros after the map and
    none before. The padding is fixed here, from the side, so that
    `torch.compile` sees no shape arithmetic (with it, inductor failed on the
    CIFAR-10 net's symbolic shapes)."""

    def __init__(self, in_channels: int, out_channels: int, side: int):
        super().__init__(in_channels, out_channels, 3, stride=2)
        total = max((-(-side // 2) - 1) * 2 + 3 - side, 0)
        self.pads = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


class ResBlock(nn.Module):
    """GroupNorm-swish-conv, + time dense, GroupNorm-swish-dropout-conv, + (1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(group_count(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # Starts as the identity, as jaxdiff's.
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.skip is None else self.skip(x)) + h


class SelfAttentionBlock(nn.Module):
    """Pre-GroupNorm self-attention over the pixels, + residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.attention = Attention(channels, channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attention(y, y).transpose(1, 2).reshape(b, c, h, w)


class UNet(_ScoreNet):
    """jaxdiff's residual U-Net (NCHW), unconditional or (num_classes > 0) conditional.

    `score_net`: `_ScoreNet`'s arguments; the preconditioning is "edm" unless given.
    """

    def __init__(
        self,
        image_channels: int,
        image_side: int,
        channels=(64, 128, 128),
        num_res_blocks: int = 2,
        attention_sides=(7,),
        heads: int = 1,
        dropout: float = 0.1,
        ff_mult: int = 4,
        **score_net,
    ):
        super().__init__(**{"preconditioning": "edm", **score_net})
        embed_dim, num_classes, context_dim = self.embed_dim, self.num_classes, self.context_dim

        def attention(width):
            if num_classes:
                return SpatialTransformer(width, context_dim, heads, ff_mult)
            return SelfAttentionBlock(width, heads)

        def res(in_width, out_width):
            return ResBlock(in_width, out_width, embed_dim, dropout)

        # The layers in the order the forward pass uses them; None: no attention there.
        self.conv_in = nn.Conv2d(image_channels, channels[0], 3, padding=1)
        self.down, self.down_attention, self.downsample = (nn.ModuleList() for _ in range(3))
        skip_widths, width, side = [channels[0]], channels[0], image_side
        for level, level_width in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(res(width, level_width))
                width = level_width
                self.down_attention.append(attention(width) if side in attention_sides else None)
                skip_widths.append(width)
            if level < len(channels) - 1:
                self.downsample.append(SameConv(width, width, side))
                side = -(-side // 2)
                skip_widths.append(width)
        self.middle = nn.ModuleList([res(width, width), attention(width), res(width, width)])
        self.up, self.up_attention, self.upsample = (nn.ModuleList() for _ in range(3))
        for level in reversed(range(len(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(res(width + skip_widths.pop(), channels[level]))
                width = channels[level]
                self.up_attention.append(attention(width) if side in attention_sides else None)
            if level > 0:
                self.upsample.append(nn.Conv2d(width, channels[level], 3, padding=1))
                side = _side_after_upsample(image_side, level)
        self.norm_out = nn.GroupNorm(group_count(width), width)
        self.conv_out = nn.Conv2d(width, image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.num_res_blocks = num_res_blocks

    def network(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        temb, context = self.embeddings(t, labels)

        def attend(block, h):
            if block is None:
                return h
            return block(h, context) if context is not None else block(h)

        h = self.conv_in(x)
        skips = [h]
        blocks = iter(zip(self.down, self.down_attention, strict=True))
        for level in range(len(self.downsample) + 1):
            for _ in range(self.num_res_blocks):
                block, attention = next(blocks)
                h = attend(attention, block(h, temb))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        first, attention, second = self.middle
        h = second(attend(attention, first(h, temb)), temb)
        blocks = iter(zip(self.up, self.up_attention, strict=True))
        for level in range(len(self.upsample), -1, -1):
            for _ in range(self.num_res_blocks + 1):
                block, attention = next(blocks)
                h = attend(attention, block(torch.cat([h, skips.pop()], dim=1), temb))
            if level > 0:
                # "nearest-exact": half-pixel centres, as jax.image.resize's "nearest".
                h = F.interpolate(h, size=skips[-1].shape[2:], mode="nearest-exact")
                h = self.upsample[len(self.upsample) - level](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _side_after_upsample(image_side: int, level: int) -> int:
    """The side of level `level - 1`: the image side halved (rounding up) level - 1 times."""
    side = image_side
    for _ in range(level - 1):
        side = -(-side // 2)
    return side


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Copying jaxdiff's (flax) parameters into a twin, so that `benchmarks/run.py`
# can check that both sides compute the same function. `params` is flax's
# parameter tree as nested dicts of numpy arrays; flax names submodules by type
# and creation order (Conv_0, Conv_1, ...), so each twin lists its layers in
# the order its jaxdiff net creates them.


@torch.no_grad()
def _set(parameter: torch.Tensor, value: np.ndarray) -> None:
    if tuple(parameter.shape) != value.shape:
        raise ValueError(f"shape {value.shape} for a parameter of shape {tuple(parameter.shape)}")
    parameter.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))  # A writable copy.


def _load_dense(layer: nn.Linear, p) -> None:
    _set(layer.weight, p["kernel"].T)
    _set(layer.bias, p["bias"])


def _load_conv(layer: nn.Conv2d, p) -> None:
    _set(layer.weight, p["kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if layer.bias is not None:
        _set(layer.bias, p["bias"])


def _load_norm(layer: nn.GroupNorm | nn.LayerNorm, p) -> None:
    _set(layer.weight, p["scale"])
    _set(layer.bias, p["bias"])


def _load_attention(layer: Attention, p) -> None:
    for name in ("query", "key", "value"):  # kernel (in, heads, head_dim)
        kernel = p[name]["kernel"]
        _set(getattr(layer, name).weight, kernel.reshape(kernel.shape[0], -1).T)
        _set(getattr(layer, name).bias, p[name]["bias"].reshape(-1))
    kernel = p["out"]["kernel"]  # (heads, head_dim, out)
    _set(layer.out.weight, kernel.reshape(-1, kernel.shape[-1]).T)
    _set(layer.out.bias, p["out"]["bias"])


def _load_transformer(layer: SpatialTransformer, p) -> None:
    for i, norm in enumerate((layer.norm1, layer.norm2, layer.norm3)):
        _load_norm(norm, p[f"LayerNorm_{i}"])
    _load_attention(layer.self_attention, p["MultiHeadAttention_0"])
    _load_attention(layer.cross_attention, p["MultiHeadAttention_1"])
    _load_dense(layer.ff_in, p["Dense_0"])
    _load_dense(layer.ff_out, p["Dense_1"])


def _load_attention_block(layer: SelfAttentionBlock | SpatialTransformer, p) -> None:
    if isinstance(layer, SpatialTransformer):
        _load_transformer(layer, p)
    else:
        _load_norm(layer.norm, p["GroupNorm_0"])
        _load_attention(layer.attention, p["MultiHeadAttention_0"])


def _load_common(model: nn.Module, params) -> None:
    _load_dense(model.embed, params["TimeEmbedding_0"]["Dense_0"])
    if model.num_classes:
        _set(model.class_embedding.weight, params["context"]["Embed_0"]["embedding"])


def load_jaxdiff_params(model: "SmallUNet | UNet", params) -> None:
    """Copies jaxdiff's parameters of the twin network into `model`, in place."""
    _load_common(model, params)
    if isinstance(model, SmallUNet):
        for i, conv in enumerate(model.convs):
            _load_conv(conv, params[f"Conv_{i}"])
        for i, (dense, norm) in enumerate(zip(model.denses, model.norms, strict=True)):
            _load_dense(dense, params[f"Dense_{i}"])
            _load_norm(norm, params[f"GroupNorm_{i}"])
        for i, tconv in enumerate([*model.tconvs, model.final]):
            # flax's kernel (h, w, in, out), applied unflipped to the dilated input;
            # PyTorch's (in, out, h, w) is the adjoint's, so spatially flipped.
            kernel = params[f"ConvTranspose_{i}"]["kernel"][::-1, ::-1]
            _set(tconv.weight, kernel.transpose(2, 3, 0, 1))
        _set(model.final.bias, params["bias"])
        for i, key in enumerate(model.transformers if model.num_classes else ()):
            _load_transformer(model.transformers[key], params[f"SpatialTransformer_{i}"])
        return
    blocks = [*model.down, model.middle[0], model.middle[2], *model.up]
    for i, block in enumerate(blocks):
        p = params[f"ResBlock_{i}"]
        _load_norm(block.norm1, p["GroupNorm_0"])
        _load_conv(block.conv1, p["Conv_0"])
        _load_dense(block.time, p["Dense_0"])
        _load_norm(block.norm2, p["GroupNorm_1"])
        _load_conv(block.conv2, p["Conv_1"])
        if block.skip is not None:
            _load_conv(block.skip, p["Conv_2"])
    attention = [a for a in model.down_attention if a is not None]
    attention += [model.middle[1], *(a for a in model.up_attention if a is not None)]
    name = "SpatialTransformer" if model.num_classes else "SelfAttentionBlock"
    for i, block in enumerate(attention):
        _load_attention_block(block, params[f"{name}_{i}"])
    convs = [model.conv_in, *model.downsample, *model.upsample, model.conv_out]
    for i, conv in enumerate(convs):
        _load_conv(conv, params[f"Conv_{i}"])
    _load_norm(model.norm_out, params["GroupNorm_0"])


def dsm_loss(model, x0, labels=None, eps: float = 1e-5) -> torch.Tensor:
    """E || std(t) s(x_t, t) + z ||^2, summed over pixels, averaged over the batch."""
    t = torch.rand(x0.shape[0], device=x0.device) * (1.0 - eps) + eps
    z = torch.randn_like(x0)
    std = marginal_std(t)[:, None, None, None]
    score = model(x0 + z * std, t, labels)
    return ((score.float() * std + z) ** 2).sum(dim=(1, 2, 3)).mean()


class Trainer:
    """AdamW + global-norm clipping + EMA, jaxdiff's `train_step` in PyTorch.

    Batches are drawn on the device from a device-resident dataset, as jaxdiff
    does, and with `random_flip` half of them (at random) flipped left-right.
    """

    def __init__(
        self,
        model,
        images,
        labels,
        batch,
        lr=2e-3,
        dtype=torch.float32,
        cond_drop=0.1,
        random_flip=False,
    ):
        self.model, self.images, self.labels, self.batch = model, images, labels, batch
        self.dtype, self.cond_drop, self.random_flip = dtype, cond_drop, random_flip
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in model.parameters()]

    def step(self) -> torch.Tensor:
        device = self.images.device
        index = torch.randint(0, self.images.shape[0], (self.batch,), device=device)
        x0 = self.images[index]
        if self.random_flip:
            flip = torch.rand(self.batch, device=device)[:, None, None, None] < 0.5
            x0 = torch.where(flip, x0.flip(3), x0)
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
def euler_maruyama(
    model, num, steps, device, labels=None, dtype=torch.float32, eps=1e-3, shape=(1, 28, 28)
):
    """The original's reverse-SDE sampler: `steps` network evaluations on `num` CHW images."""
    times = torch.linspace(1.0, eps, steps, device=device)
    dt = times[0] - times[1]
    x = torch.randn(num, *shape, device=device) * marginal_std(times[:1])
    mean = x
    for t in times:  # No host sync inside: t stays a device scalar.
        g = SIGMA**t
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            score = model(x, t.expand(num), labels).float()
        mean = x + g**2 * score * dt
        x = mean + torch.sqrt(dt) * g * torch.randn_like(x)
    return mean
