"""The ViT-L/16 backbone of the SPN encoder, with timm's module and parameter names.

Written without timm (timm imports torchvision, which has no CPU build here). The attention reshape is
kept at rank 4, (N, T, 3*heads, head_dim) -> (N, 3*heads, T, head_dim), instead of timm's rank-5
(3, N, heads, T, head_dim) permute: the values are the same views of the same numbers, and the Neural
Engine and Core ML prefer tensors of rank <= 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .params import ViTParams


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 3, S, S]
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, T, C], tokens row-major


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, C]
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.num_heads, dim=1)  # each [N, heads, T, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as timm
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as timm's default
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.norm1 = nn.LayerNorm(p.embed_dim, eps=p.layer_norm_eps)
        self.attn = Attention(p.embed_dim, p.num_heads)
        self.ls1 = LayerScale(p.embed_dim)
        self.norm2 = nn.LayerNorm(p.embed_dim, eps=p.layer_norm_eps)
        self.mlp = Mlp(p.embed_dim, int(p.embed_dim * p.mlp_ratio))
        self.ls2 = LayerScale(p.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, C]
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT returning the final feature map and the token outputs of selected blocks.

    ``forward`` returns ``(features [N, C, g, g], {block_id: tokens [N, 1 + g*g, C]})``; hooked tokens are
    taken after the block and before the final norm, class token included (as ml-sharp records them).
    """

    def __init__(self, p: ViTParams, hook_block_ids: tuple[int, ...] = ()):
        super().__init__()
        self.params = p
        self.hook_block_ids = tuple(hook_block_ids)
        num_tokens = 1 + p.grid * p.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, p.embed_dim))
        self.patch_embed = PatchEmbed(p.patch_size, p.embed_dim)
        self.blocks = nn.Sequential(*[Block(p) for _ in range(p.depth)])
        self.norm = nn.LayerNorm(p.embed_dim, eps=p.layer_norm_eps)
        self.head = nn.Linear(p.embed_dim, p.num_classes)  # unused classifier, present for strict loading

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:  # x: [N, 3, S, S]
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        hooked: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.hook_block_ids:
                hooked[index] = tokens
        return tokens_to_map(self.norm(tokens), self.params.grid), hooked


def tokens_to_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Drop the class token and fold tokens into a feature map: [N, 1 + g*g, C] -> [N, C, g, g]."""
    n, _, c = tokens.shape
    return tokens[:, 1:].transpose(1, 2).reshape(n, c, grid, grid)
