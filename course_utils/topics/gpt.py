"""A small GPT you can hold in your head: lesson 04's model, which is the one in ``recipes/train_gpt.py``.

Decoder-only transformer in the nanoGPT mould: token embedding -> N x [LayerNorm -> causal self-attention -> residual,
LayerNorm -> MLP -> residual] -> LayerNorm -> linear head tied to the embedding. Positions come from rotary
embeddings (RoPE, the default: one complex multiplication per query/key pair of channels) or from ALiBi's distance
penalty; attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) with its built-in causal
mask whenever it can; a KV cache makes generation one token per step. ``benchmarks/gpt_speed.py`` measures its speed.

The code lives once, in the take-home recipe (a single file with no course package, so a learner can copy it); this
module loads it from there, so the lesson and the recipe cannot drift apart. The only addition: a bad setting in
:class:`GPTConfig` is the course's one-sentence :class:`~course_utils.core.errors.BadParameter`.
"""

from __future__ import annotations


from course_utils.core.errors import BadParameter
from course_utils.core.paths import REPO_ROOT, load_recipe

RECIPE = REPO_ROOT / "recipes" / "train_gpt.py"


_model = load_recipe("train_gpt")
rope_tables = _model.rope_tables
apply_rope = _model.apply_rope
alibi_slopes = _model.alibi_slopes
_HeadsWithRope = _model._HeadsWithRope
CausalSelfAttention = _model.CausalSelfAttention
MLP = _model.MLP
Block = _model.Block
KVCache = _model.KVCache
GPT = _model.GPT


class GPTConfig(_model.GPTConfig):
    """The recipe's ``GPTConfig``; a setting it cannot use stops with one sentence naming it."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as err:
            raise BadParameter(str(err)) from None


__all__ = ["GPTConfig", "GPT", "KVCache", "Block", "MLP", "CausalSelfAttention", "rope_tables", "apply_rope",
           "alibi_slopes"]
