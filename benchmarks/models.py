"""The Flax model the speed benchmarks share: a small decoder-only transformer (nnx).

Each block is LayerNorm -> causal self-attention -> residual -> LayerNorm -> MLP
-> residual: 16 parameter leaves per block, plus the embeddings, the final norm
and the output head (6 leaves). ``blocks=13`` gives 214 leaves.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    blocks: int = 13
    d_model: int = 128
    heads: int = 4
    d_ff: int = 512
    vocab: int = 256
    seq: int = 64


class Block(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(cfg.heads, cfg.d_model, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.up = nnx.Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.down = nnx.Linear(cfg.d_ff, cfg.d_model, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.seq, cfg.d_model)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.blocks)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def transformer(cfg: TransformerConfig = TransformerConfig(), seed: int = 0):
    """``(graphdef, params)``: the model split into its structure and a plain dict of parameter arrays."""
    model = Transformer(cfg, nnx.Rngs(seed))
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, state.to_pure_dict()


def loss_fn(graphdef, params, tokens):
    """Next-token cross-entropy of ``tokens`` (batch, seq + 1)."""
    model = nnx.merge(graphdef, nnx.State(params))
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def batch(cfg: TransformerConfig, size: int, seed: int = 0):
    return jax.random.randint(jax.random.PRNGKey(seed), (size, cfg.seq + 1), 0, cfg.vocab, dtype=jnp.int32)
